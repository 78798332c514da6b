"""Load checkpoint files as memory maps while a worker restores, so a resume needs no second copy of the states.

DeepSpeed's `load_checkpoint` reads each rank's optimizer file with a plain `torch.load`: the whole file (fp32
master weights and both Adam moments, ~6 GB per worker for a 1B-parameter model on 2 workers) is read into
fresh memory while the engine's own partitions already hold the master weights, so a resumed worker peaks
~2 bytes/param/N above a running one. Mapped, the file's pages are read as they are copied (and the page
cache can drop them again), and the moments handed to the optimizer become private copies only as steps
write them. Once the load is done, the mapped pages it read (the master weights, copied into the engine's own
partitions) are dropped from the process: nothing has written to the mappings yet, so they hold only file
pages, and leaving them mapped would count ~4 bytes/param/N of page cache in the worker's RSS.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import sys
from collections.abc import Iterator
from typing import Any

from orchestrator.runtime.host_memory import libc


@contextlib.contextmanager
def mapped_torch_loads() -> Iterator[None]:
    """Within: `torch.load` of a file path maps the file (torch's mmap=True) unless the caller chose otherwise."""
    import torch

    original = torch.load
    mapped: list[str] = []

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if "mmap" not in kwargs and isinstance(f, str | os.PathLike):
            try:
                state = original(f, *args, mmap=True, **kwargs)
                mapped.append(os.path.realpath(f))
                return state
            except RuntimeError as exc:  # a legacy (non-zip) file cannot be mapped: read it as before
                if "mmap" not in str(exc):
                    raise
        return original(f, *args, **kwargs)

    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]
        release_file_pages(mapped)


def release_file_pages(paths: list[str]) -> int:
    """Drop this process's resident pages of its mappings of `paths` (unwritten private maps: file pages only).

    Later reads fault the pages back in from the page cache or the file. Returns the bytes of mappings advised."""
    if not paths or not sys.platform.startswith("linux"):
        return 0
    try:
        madvise = libc().madvise
    except OSError:
        return 0
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    wanted = set(paths)
    advised = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            # A file removed after loading (the restore deletes its download) shows as "<path> (deleted)".
            if len(fields) == 6 and fields[5].strip().removesuffix(" (deleted)") in wanted:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if madvise(start, end - start, mmap.MADV_DONTNEED) == 0:
                    advised += end - start
    return advised
