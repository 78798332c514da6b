"""The life of a job's secrets file (ORCH_HOME/secrets/<id>.env, 0600) on this machine.

Every `env` value of a spec is secret: it reaches the job's driver and workers only through this file, never
through Ray's job settings, the stored spec or jobs.db. The file exists while the job is queued or running
(also across resubmissions after a lost driver) and is removed as soon as the job ends, in any state. So
`orch resume` cannot find the values again on disk: it takes each one from its own environment
(`HF_TOKEN=... orch resume JOB`), as it takes the AWS credentials, and refuses naming any that are missing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from orchestrator.control.index import JobIndex, JobRecord
from orchestrator.core.errors import NotFoundError, OrchError
from orchestrator.core.secrets import write_secrets_file
from orchestrator.core.spec import REDACTED

# `orch resume` writes the file a moment before it moves the record out of its final state: a sweep running in
# between must not take it for a leftover.
SWEEP_GRACE_S = 60.0


def secrets_file(directory: Path, record_id: str) -> Path:
    return directory / f"{record_id}.env"


def drop(directory: Path, record_id: str) -> None:
    """The job ended: its secrets leave this machine's disk."""
    secrets_file(directory, record_id).unlink(missing_ok=True)


def sweep(directory: Path, db: JobIndex, now: float | None = None) -> None:
    """Remove the files of records that ended by a way that did not drop them (`orch sync`, another version).

    A file without a record is left alone: `record()` writes the file before it inserts the record."""
    if not directory.is_dir():
        return
    now = time.time() if now is None else now
    for path in directory.glob("*.env"):
        try:
            if now - path.stat().st_mtime < SWEEP_GRACE_S or not db.get(path.stem).state.terminal:
                continue
        except (OSError, NotFoundError):
            continue
        path.unlink(missing_ok=True)


def stored_env(rec: JobRecord) -> dict[str, Any]:
    """The env section of a job's or campaign's stored spec (values redacted, or plain from older records)."""
    spec = rec.spec.get("base", {}) if rec.kind == "campaign" else rec.spec
    env = spec.get("env") or {}
    return env if isinstance(env, dict) else {}


def resume_secrets(rec: JobRecord) -> dict[str, str]:
    """The env values a resumed job gets back: each redacted one from this command's environment."""
    values, missing = {}, []
    for name, value in stored_env(rec).items():
        if value != REDACTED:
            values[name] = str(value)  # stored in clear by an older version: still what the job ran with
        elif os.environ.get(name) is not None:
            values[name] = os.environ[name]
        else:
            missing.append(name)
    if missing:
        names = ", ".join(sorted(missing))
        raise OrchError(
            f"{rec.kind.capitalize()} {rec.id} sets env {names} in its spec. Env values are secret and are not "
            "kept on disk after a job ends, so resume takes them from its own environment, where they are not set. "
            f"Set them in this shell (e.g. export {sorted(missing)[0]}=...) and run `orch resume {rec.id}` again."
        )
    return values


def write_for_resume(directory: Path, rec: JobRecord) -> None:
    """The secrets file of a job about to be queued again (AWS credentials and env values from this command)."""
    values = resume_secrets(rec)
    drop(directory, rec.id)
    write_secrets_file(directory, rec.id, values)
