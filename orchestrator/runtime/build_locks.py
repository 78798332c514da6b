"""Stale JIT-build locks: removed before DeepSpeed starts, so one killed worker cannot hang every later job.

DeepSpeed JIT-compiles a communication op into TORCH_EXTENSIONS_DIR on first use, guarded by a `lock` file
(torch's FileBaton: create it exclusively, build, delete it; everyone else waits while it exists). A worker
killed during that build (a cancelled job, `orch cluster down`, a test) leaves the file behind, and every later
worker on the machine waits on it forever. A build takes well under a minute, so a lock older than
`STALE_AFTER_S` is a leftover.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

STALE_AFTER_S = 600.0
log = logging.getLogger(__name__)


def extensions_root() -> Path:
    """Where torch builds JIT extensions (TORCH_EXTENSIONS_DIR, else torch's default cache)."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "torch_extensions"


def clear_stale_build_locks(root: Path | None = None, now: float | None = None) -> list[Path]:
    """Remove `lock` files of extension builds older than STALE_AFTER_S; returns what was removed."""
    root = root or extensions_root()
    now = time.time() if now is None else now
    removed = []
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        try:
            if now - lock.stat().st_mtime > STALE_AFTER_S:
                lock.unlink()
                removed.append(lock)
        except OSError:
            continue  # gone already (another rank removed it) or not ours to remove
    for lock in removed:
        log.warning("removed a stale extension build lock left by a killed process: %s", lock)
    return removed
