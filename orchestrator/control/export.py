"""Consolidate a stored ZeRO checkpoint into one fp32 state dict (no `zero_to_fp32.py` by hand).

The shards of every rank are fetched (hash-checked) from storage into a temporary directory and merged
with DeepSpeed's own consolidation code, on CPU, without starting any distributed job.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from orchestrator.control import safe_load
from orchestrator.core import checkpoints
from orchestrator.core.errors import NotFoundError, OrchError
from orchestrator.core.noise import deepspeed_quietly_on_cpu
from orchestrator.storage import ObjectStore


def choose_step(store: ObjectStore, step: int | None) -> int:
    """The requested committed step, or the newest one that verifies."""
    committed = sorted(c.step for c in checkpoints.list_checkpoints(store) if c.committed)
    if not committed:
        raise NotFoundError(f"No committed checkpoint under {store.uri}. Set checkpoint.every_steps or "
                            "checkpoint.at_end in the job spec so the job saves one.")
    if step is None:
        manifest = checkpoints.latest_verified(store)
        if manifest is None:
            raise OrchError(f"No checkpoint under {store.uri} passes verification; run `orch verify` for details.")
        return int(manifest["step"])
    if step not in committed:
        raise NotFoundError(f"There is no committed checkpoint at step {step}; committed steps: "
                            f"{', '.join(map(str, committed))}.")
    return step


class LazyTensor:
    """One consolidated tensor, known by shape and dtype (fp32) and produced only when `materialize()` is called.

    Its source is a DeepSpeed ZeRO 1-3 pseudo tensor (gathered from the memory-mapped shards on `.contiguous()`)
    or a tensor of a memory-mapped ZeRO-0 file; either way nothing is read into memory until asked for."""

    def __init__(self, source: Any) -> None:
        import torch

        self._source = source
        self.shape = torch.Size(source.shape)
        self.dtype = torch.float32  # consolidation gives fp32, whatever the training precision

    def numel(self) -> int:
        return int(self.shape.numel())

    def element_size(self) -> int:
        return 4

    def materialize(self) -> Any:
        """The fp32 tensor. ZeRO 1-3 sources gather a new one each call; a ZeRO-0 fp32 source comes back as the mapped
        tensor itself (tied weights then share it), so a caller that keeps the tensor clones it."""
        import torch

        tensor = self._source.contiguous()  # a GatheredTensor gathers here; a mapped tensor stays mapped
        return tensor.detach().to(torch.float32)


@contextlib.contextmanager
def open_consolidated(store: ObjectStore, step: int) -> Iterator[dict[str, LazyTensor]]:
    """The checkpoint at `step` as name -> LazyTensor; the downloaded files live until the block ends.

    The optimizer shards are memory-mapped (DeepSpeed drops the Adam moments unread), so a caller that writes one
    tensor at a time holds about one tensor at a time, not the model."""
    import torch

    with tempfile.TemporaryDirectory(prefix="orch-export-") as tmp:
        tag = checkpoints.step_tag(step)
        checkpoints.download_checkpoint(store, step, Path(tmp) / tag)
        names = [p.name for p in (Path(tmp) / tag).iterdir()]
        # Stored files are data: every torch.load below (DeepSpeed's included) reads weights only.
        with safe_load.weights_only_loads():
            try:
                if any(n.startswith("zero_pp_rank_") for n in names):
                    # DeepSpeed prints its progress and notices; never on our stdout, and only with --verbose.
                    with deepspeed_quietly_on_cpu():
                        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                        state = get_fp32_state_dict_from_zero_checkpoint(tmp, tag=tag, lazy_mode=True)
                else:  # ZeRO stage 0: rank 0 saved the whole module
                    state = torch.load(Path(tmp) / tag / "mp_rank_00_model_states.pt", mmap=True)["module"]
            except OrchError:
                raise
            except Exception as exc:  # a file that is not what DeepSpeed wrote: say so, no traceback
                raise _unreadable(store, step, exc) from None
        if not isinstance(state, dict) or not all(_tensor_like(v) for v in state.values()):
            raise OrchError(f"Checkpoint step {step} under {store.uri} holds no model state dict; try another "
                            "step with --step (see orch checkpoints).")
        yield {str(k): LazyTensor(v) for k, v in state.items()}


def _tensor_like(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return True
    return hasattr(value, "shape") and hasattr(value, "dtype") and callable(getattr(value, "contiguous", None))


def _unreadable(store: ObjectStore, step: int, exc: Exception) -> OrchError:
    return OrchError(
        f"Checkpoint step {step} under {store.uri} cannot be consolidated ({type(exc).__name__}: "
        f"{str(exc)[:200]}). Its files are not a DeepSpeed checkpoint this version can read; try an "
        "older one with --step (see orch checkpoints)."
    )


def consolidated_state_dict(store: ObjectStore, step: int) -> dict[str, Any]:
    """The whole consolidated fp32 state dict in memory (torch.save, predict): each tensor with its own storage."""
    with open_consolidated(store, step) as lazy:
        return {name: lazy.pop(name).materialize().clone() for name in list(lazy)}


def save_state_dict(state: Mapping[str, Any], out: Path, fmt: str) -> None:
    """Write `state` (tensors or LazyTensors): safetensors streams one tensor at a time, pt materialises all."""
    try:
        _save(state, out, fmt)
    except OSError as exc:
        raise OrchError(f"--out {out} cannot be written ({exc.strerror or exc}). Give a path in a directory you "
                        "can write.") from None


def _save(state: Mapping[str, Any], out: Path, fmt: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        if fmt == "safetensors":
            from orchestrator.control.safetensors_stream import tensor_entry, write_file

            write_file(tmp, [tensor_entry(name, t) for name, t in state.items()], metadata={"format": "pt"})
        else:
            import torch

            # torch.save pickles one dict: the whole model is in memory here (safetensors and hf stream instead).
            torch.save({name: t.materialize().clone() if hasattr(t, "materialize") else t
                        for name, t in state.items()}, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a stopped or failed write leaves nothing behind
        raise
    tmp.replace(out)  # never leave a half-written model under the requested name


def check_out_path(raw: str) -> Path:
    """--out must be a path a model file can be written to, checked before any work; never a device or FIFO."""
    if not raw.strip():
        raise OrchError("--out is empty. Give the file to write, e.g. --out model.pt.")
    path = Path(raw)
    if path.is_dir():
        raise OrchError(f"--out {raw} is a directory. Give a file path inside it, e.g. --out {path / 'model.pt'}.")
    if path.exists() and not path.is_file():
        raise OrchError(f"--out {raw} exists and is not a regular file (a device or pipe?); it is left alone. "
                        "Give a new file path.")
    if path.parent.exists() and not path.parent.is_dir():
        raise OrchError(f"--out {raw}: {path.parent} is not a directory. Give a path in a directory.")
    return path
