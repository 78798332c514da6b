"""Secrets on their way to a job's driver and workers, never through Ray's job settings or storage.

On a cluster that shares this machine, the control plane writes a job's credentials to a 0600 JSON file
(`write_secrets_file`); the driver and every worker read it first thing (`load_secrets_file`) and the control
plane removes it when the job ends. Remote clusters use their nodes' own credentials instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SECRETS_FILE_ENV = "ORCH_SECRETS_FILE"

def write_secrets_file(directory: Path, job_id: str, secrets: dict[str, str]) -> Path | None:
    """Credentials for the workers of a job on the embedded cluster, readable by this user only."""
    values = {k: os.environ[k] for k in SECRET_ENV if os.environ.get(k)}
    values.update(secrets)
    if not values:
        return None
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{job_id}.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already exists
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh)  # JSON, not KEY=value lines: values may hold newlines (PEM keys) or '='
    return path


def load_secrets_file() -> None:
    """Called first thing in the driver and in each worker."""
    path = os.environ.get(SECRETS_FILE_ENV)
    if not path or not Path(path).is_file():
        return
    os.environ.update(json.loads(Path(path).read_text()))
