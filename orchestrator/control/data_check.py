"""A job's prepared dataset, checked at submit: refused when it has no committed index.json.

Without the check a job naming a dataset that was never prepared, or whose preparation did not finish, would
be accepted and fail only once its workers start. Only a definite "no index here" refuses: a local path that
does not exist on this machine may exist on the cluster's, and a store this machine cannot reach may be
reachable with the job's own credentials, so those are left to the workers (whose error names data.path too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.core.errors import SpecError
from orchestrator.core.token_shards import INDEX_KEY, is_prepared_dataset_path
from orchestrator.storage import StorageError, open_store


def check_prepared_data(data: dict[str, Any]) -> None:
    path = data.get("path")
    if not isinstance(path, str) or not is_prepared_dataset_path(path):
        return
    if "://" not in path or path.startswith("file://"):
        if not Path(path.removeprefix("file://")).expanduser().is_dir():
            return
    try:
        store = open_store(path)
        committed = store.exists(INDEX_KEY)
    except StorageError:
        return
    if not committed:
        raise SpecError(
            f"field 'data.path': {path} holds no {INDEX_KEY}, so it is not a prepared dataset or its preparation "
            f"did not finish. Run `orch data prepare INPUT... --out {path}` (a rerun resumes), or point data.path "
            "at a prepared dataset or a .bin/.npy token file.")
