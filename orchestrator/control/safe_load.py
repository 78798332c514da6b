"""Checkpoint files are data: the `orch` process never runs code that a stored file asks for.

A torch checkpoint is a pickle, and a pickle can name any callable to run while it is read. Whoever can write
to storage can write shards and a matching MANIFEST, so hashes do not help; what does is reading every file
with torch's weights-only unpickler, which builds tensors, containers and numbers and refuses everything else.
DeepSpeed's own consolidation code (`zero_to_fp32`) asks for full unpickling, so while it runs here every
`torch.load` is made weights-only too.

The allow-list is what real DeepSpeed ZeRO 0-3 checkpoints (fp32 and bf16) hold besides tensors: three small
DeepSpeed classes and the numpy array of the RNG state orch saves with each checkpoint. None of them runs
code when built; `tests/control/test_safe_load.py` saves real checkpoints to keep the list honest.
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.core.errors import OrchError
from orchestrator.core.noise import deepspeed_quietly_on_cpu

# "module:attribute" of every non-tensor type a DeepSpeed checkpoint of ours holds.
ALLOWED_GLOBALS = (
    "deepspeed.runtime.zero.config:ZeroStageEnum",
    "deepspeed.utils.tensor_fragment:fragment_address",
    "deepspeed.runtime.fp16.loss_scaler:LossScaler",
    "deepspeed.runtime.fp16.loss_scaler:DynamicLossScaler",
)
# numpy's RNG state is a uint32 array; plain numeric dtypes only (no object arrays).
_NUMPY_SCALARS = ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "float16", "float32", "float64")


class UnsafeCheckpointError(OrchError):
    """A checkpoint file asks to run code (or build a type outside the allow-list) when loaded."""


def allowed_globals() -> list[Any]:
    import numpy as np

    found: list[Any] = []
    with deepspeed_quietly_on_cpu():  # importing DeepSpeed detects an accelerator and says so on stdout
        for entry in ALLOWED_GLOBALS:
            module, name = entry.split(":")
            try:
                found.append(getattr(importlib.import_module(module), name))
            except (ImportError, AttributeError):  # another DeepSpeed version: it cannot have stored this type
                continue
    reconstruct = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core")
                                          else "numpy.core.multiarray")._reconstruct
    found += [np.ndarray, np.dtype, reconstruct]
    found += [type(np.dtype(getattr(np, scalar))) for scalar in _NUMPY_SCALARS]
    return found


def _refusal(source: Any, exc: BaseException) -> UnsafeCheckpointError:
    # torch's message: a paragraph about weights_only, then the line that names what the file asked for.
    lines = [line.strip() for line in str(exc).split("WeightsUnpickler error:", 1)[-1].splitlines()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line or "Unsupported" in line]
    detail = (named or [line for line in lines if line] or ["unreadable"])[0][:300]
    return UnsafeCheckpointError(
        f"Refusing to load checkpoint file {Path(str(source)).name}: it is not plain tensor data ({detail}). "
        "A file like this can run code when unpickled, so orch never loads it on this machine. It was written "
        "by something other than a DeepSpeed training run of orch (or storage was tampered with); check who can "
        "write to this storage, and export an older checkpoint with --step."
    )


def load_file(path: str | Path, **kwargs: Any) -> Any:
    """torch.load, weights only, with DeepSpeed's few checkpoint types allowed; a refusal is an OrchError."""
    with weights_only_loads():
        import torch

        return torch.load(path, **kwargs)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within: every torch.load (also DeepSpeed's `weights_only=False` ones) reads weights only."""
    import torch

    original = torch.load

    def load(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: Any = None,
             **kwargs: Any) -> Any:
        del pickle_module, weights_only  # never the caller's choice here
        try:
            with torch.serialization.safe_globals(allowed_globals()):
                return original(f, map_location=map_location if map_location is not None else "cpu",
                                weights_only=True, **kwargs)
        except pickle.UnpicklingError as exc:
            raise _refusal(f, exc) from None

    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]
