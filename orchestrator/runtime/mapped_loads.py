"""Load checkpoint files as memory maps while a worker restores, so a resume needs no second copy of the states.

DeepSpeed's `load_checkpoint` reads each rank's optimizer file with a plain `torch.load`: the whole file (fp32
master weights and both Adam moments, ~6 GB per worker for a 1B-parameter model on 2 workers) is read into
fresh memory while the engine's own partitions already hold the master weights, so a resumed worker peaks
~2 bytes/param/N above a running one. Mapped, the file's pages are read as they are copied (and the page
cache can drop them again), and the moments handed to the optimizer become private copies only as steps
write them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def mapped_torch_loads() -> Iterator[None]:
    """Within: `torch.load` of a file path maps the file (torch's mmap=True) unless the caller chose otherwise."""
    import torch

    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if "mmap" not in kwargs and isinstance(f, str | os.PathLike):
            try:
                return original(f, *args, mmap=True, **kwargs)
            except RuntimeError as exc:  # a legacy (non-zip) file cannot be mapped: read it as before
                if "mmap" not in str(exc):
                    raise
        return original(f, *args, **kwargs)

    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]
