"""DeepSpeed's shared-memory all-reduce buffers on CPU: let go once every rank has mapped them; stale ones swept.

On the CPU accelerator, DeepSpeed's communication backend builds a shared-memory all-reduce (used only by its
inference all-reduce) and every rank creates a 66 MB `/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`
that nothing ever unlinks. /dev/shm is RAM: each worker of each job left one behind, a test suite's worth filled
16 GB of a 24 GB machine and Ray's memory monitor began killing workers. Once every rank has opened its peers'
buffers (after DeepSpeed's initialisation and a barrier) the names are no longer needed: the mappings stay valid
and the memory is freed when the last rank exits, however it exits. Buffers left by workers killed before that
point are swept at the next worker start: those no process maps, older than `STALE_AFTER_S`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer"
# A rank maps its buffer right after creating it; the age only guards that instant.
STALE_AFTER_S = 60.0
log = logging.getLogger(__name__)


def own_buffer(rank: int, shm_dir: Path = SHM_DIR) -> Path | None:
    """This rank's buffer, named as DeepSpeed's shm.cpp names it (MASTER_ADDR/PORT of the process group)."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    return shm_dir / f"{PREFIX}_{os.getuid()}_{addr}_{port}_{rank}"


def release_own_buffer(rank: int, shm_dir: Path = SHM_DIR) -> bool:
    """Unlink this rank's buffer name; call only once every rank has finished initialising (after a barrier)."""
    path = own_buffer(rank, shm_dir)
    if path is None:
        return False
    try:
        path.unlink()
    except OSError:
        return False  # none created (multi-node, GPU) or already gone
    return True


def mapped_paths(proc: Path = Path("/proc")) -> set[str]:
    """Every /dev/shm file some process on this machine has mapped now."""
    mapped = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue  # exited meanwhile, or not ours to read
        mapped.update(line.split(maxsplit=5)[5] for line in text.splitlines() if f"/dev/shm/{PREFIX}" in line)
    return mapped


def sweep_stale_buffers(shm_dir: Path = SHM_DIR, proc: Path = Path("/proc"), now: float | None = None) -> list[Path]:
    """Remove this user's buffers that no process maps and that are older than STALE_AFTER_S."""
    candidates = list(shm_dir.glob(f"{PREFIX}_{os.getuid()}_*"))
    if not candidates:
        return []
    mapped = mapped_paths(proc)
    now = time.time() if now is None else now
    removed = []
    for path in candidates:
        try:
            if str(SHM_DIR / path.name) not in mapped and now - path.stat().st_mtime > STALE_AFTER_S:
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # removed by another worker meanwhile
    if removed:
        log.warning("removed %d stale DeepSpeed shared-memory buffers left by killed workers", len(removed))
    return removed
