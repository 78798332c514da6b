"""Worker side of checkpoints: save locally, upload in the background, commit, restore.

The training loop blocks only for DeepSpeed's local save. Each rank then uploads its own files on a
background thread and writes its rank part; rank 0's thread waits for every rank's part and writes
MANIFEST.json last (the commit marker), then applies retention. No collective ever runs on the
background thread: ranks coordinate only through storage.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchestrator.core import checkpoints
from orchestrator.core.spec import CheckpointSpec
from orchestrator.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 600.0
# Upload failures in a row after which the job stops and says storage is broken.
MAX_CONSECUTIVE_FAILURES = 3


@contextlib.contextmanager
def zip_crc_skipped() -> Iterator[None]:
    """torch.save without the CRC32 of every record in its zip file.

    The CRC is computed on the training thread while it blocks, and at a billion parameters that is GBs per
    worker; it checks nothing ours does not: every file is sha256-hashed into the manifest on upload and checked
    again on every download (torch.load does not read the CRCs).
    """
    from torch.utils.serialization import config

    before = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        yield
    finally:
        config.save.compute_crc32 = before


class CheckpointWriter:
    def __init__(self, store: ObjectStore, rank: int, world_size: int, local_root: Path, spec_hash: str,
                 policy: CheckpointSpec):
        self.store, self.rank, self.world_size = store, rank, world_size
        self.local_root, self.local_dir = local_root, local_root / f"rank-{rank}"
        # A killed attempt of this rank on this node left its half-written save here (GBs for a large model):
        # nothing else removes it, and an upload of this directory must hold only this attempt's files.
        shutil.rmtree(self.local_dir, ignore_errors=True)
        self.spec_hash, self.policy = spec_hash, policy
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ckpt-upload-{rank}")
        self._pending: Future | None = None
        self.failures_in_a_row = 0
        self.last_error: str = ""
        self.last_saved_step = -1
        self.stall_seconds: list[float] = []

    def save(self, engine: Any, step: int, metrics: dict[str, float], client_state: dict[str, Any]) -> None:
        """Collective: every rank calls it at the same step."""
        started = time.perf_counter()
        self.wait()  # the only extra stall: the previous upload, if it is still running
        tag = checkpoints.step_tag(step)
        (self.local_dir / tag).mkdir(parents=True, exist_ok=True)  # every rank writes here, not just rank 0
        with zip_crc_skipped():
            engine.save_checkpoint(str(self.local_dir), tag=tag, client_state=client_state, save_latest=False)
        self.last_saved_step = step
        upload = self._upload_job(self.local_dir / tag, step, dict(metrics))
        if self.policy.async_upload:
            self._pending = self._pool.submit(upload)
        else:
            upload()
        self.stall_seconds.append(time.perf_counter() - started)

    def _upload_job(self, directory: Path, step: int, metrics: dict[str, float]) -> Callable[[], None]:
        def run() -> None:
            try:
                entries = []
                for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                    rel = path.relative_to(directory).as_posix()
                    self.store.put_file(f"{checkpoints.step_prefix(step)}/{rel}", path)
                    entries.append(checkpoints.file_entry(path, rel))
                checkpoints.write_rank_part(self.store, step, self.rank, entries)
                if self.rank == 0:
                    checkpoints.wait_and_commit(self.store, step, self.world_size, metrics, self.spec_hash,
                                                timeout_s=COMMIT_TIMEOUT_S, poll_s=0.2)
                    self._apply_retention()
                self.failures_in_a_row = 0
            except StorageError as exc:
                # Training goes on; this checkpoint stays uncommitted and is never used.
                self.failures_in_a_row += 1
                self.last_error = str(exc)
                log.warning("checkpoint step %d not uploaded (%d in a row): %s", step, self.failures_in_a_row, exc)
            finally:
                shutil.rmtree(directory, ignore_errors=True)

        return run

    def _apply_retention(self) -> None:
        try:
            checkpoints.apply_retention(self.store, keep_latest=self.policy.keep_latest,
                                        keep_best=self.policy.keep_best, metric=self.policy.metric,
                                        mode=self.policy.mode)
        except StorageError as exc:  # retention is housekeeping: log, retry next time, never fail training
            log.warning("checkpoint retention skipped: %s", exc)

    def wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            raise StorageError(f"{self.failures_in_a_row} checkpoints in a row could not be uploaded to "
                               f"{self.store.uri}; last error: {self.last_error}")

    def close(self) -> None:
        self.wait()
        self._pool.shutdown(wait=True)
        shutil.rmtree(self.local_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the job's directory goes with its last rank on this node
            self.local_root.rmdir()


def restore_candidates(store: ObjectStore) -> list[int]:
    """Committed steps whose manifests check out (sizes), newest first."""
    steps = []
    for info in sorted(checkpoints.list_checkpoints(store), key=lambda c: c.step, reverse=True):
        if info.committed and checkpoints.verify_checkpoint(store, info.step, deep=False).ok:
            steps.append(info.step)
    return steps


def discard_after(store: ObjectStore, step: int) -> list[int]:
    """Delete every step dir newer than the restored step (manifest first), before training goes on.

    They are from a lost attempt: uncommitted leftovers whose stale rank parts a re-save of the same
    step could otherwise pick up, or committed ones that failed verification. Retention would also
    take them for garbage while this attempt's saves of those steps are still uploading.
    """
    discarded = [info.step for info in checkpoints.list_checkpoints(store) if info.step > step]
    for stale in discarded:
        store.delete(checkpoints.manifest_key(stale))
        store.delete_prefix(checkpoints.step_prefix(stale) + "/")
    return discarded


def download_for_load(store: ObjectStore, step: int, local_root: Path, rank: int) -> Path | None:
    """Fetch a checkpoint (hash-checked) into a rank-private dir laid out as DeepSpeed expects."""
    root = local_root / f"restore-rank-{rank}"
    shutil.rmtree(root, ignore_errors=True)
    try:
        checkpoints.download_checkpoint(store, step, root / checkpoints.step_tag(step))
    except StorageError as exc:
        log.warning("checkpoint step %d is damaged, trying an older one: %s", step, exc)
        return None
    return root
