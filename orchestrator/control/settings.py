"""Where things live on the user's machine, from the environment, with defaults that just work."""

from __future__ import annotations

import os
from pathlib import Path


def orch_home() -> Path:
    """ORCH_HOME (default ~/.orch): the job database, the local cluster's files, default storage."""
    return Path(os.environ.get("ORCH_HOME", "~/.orch")).expanduser().resolve()


def db_path() -> Path:
    return orch_home() / "jobs.db"


def default_storage_uri() -> str:
    return (orch_home() / "storage").as_uri()


def ray_address_override() -> str | None:
    """An existing cluster to use instead of the embedded one (`--address` sets this too)."""
    return os.environ.get("ORCH_RAY_ADDRESS") or None


def extensions_dir() -> Path:
    """DeepSpeed JIT-compiles a comm op on first use (~35 s); caching it here makes later jobs start fast."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR", str(orch_home() / "torch_extensions")))
