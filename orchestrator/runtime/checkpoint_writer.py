"""Worker side of checkpoints: save locally, upload in the background, commit, restore.

The training loop blocks only while DeepSpeed gathers what to save and the worker forks: a forked child writes
the files (background_save.py) while training goes on, and the next optimizer step waits for it if it is not
done. Each rank then uploads its own files on a background thread and writes its rank part; rank 0's thread
waits for every rank's part and writes MANIFEST.json last (the commit marker), then applies retention. No
collective ever runs on the background thread: ranks coordinate only through storage.
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
from orchestrator.runtime.background_save import (
    BackgroundWrite,
    DeferredCheckpointEngine,
    LocalSaveError,
    can_fork_for,
    write_files,
)
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
        # Seconds training waited for each checkpoint, by step: the save itself, and later, any wait of an
        # optimizer step for its background write. `settled()` hands over those whose write is done.
        self.stall_seconds: dict[int, float] = {}
        self._writing: tuple[int, BackgroundWrite] | None = None
        self._settled: list[tuple[int, float, float]] = []

    def attach(self, engine: Any, optimizer: Any) -> None:
        """Have this engine's checkpoint files written by a forked child (see background_save.py), and this
        optimizer wait for that child before it steps: the step writes the very states being saved."""
        if self.policy.async_upload and not isinstance(engine.checkpoint_engine, DeferredCheckpointEngine):
            engine.checkpoint_engine = DeferredCheckpointEngine(engine.checkpoint_engine)
            optimizer.register_step_pre_hook(lambda *_: self.wait_for_local_write())

    def save(self, engine: Any, step: int, metrics: dict[str, float], client_state: dict[str, Any]) -> None:
        """Collective: every rank calls it at the same step."""
        started = time.perf_counter()
        self.wait()  # the previous upload, if it is still running
        tag = checkpoints.step_tag(step)
        (self.local_dir / tag).mkdir(parents=True, exist_ok=True)  # every rank writes here, not just rank 0
        with zip_crc_skipped():
            engine.save_checkpoint(str(self.local_dir), tag=tag, client_state=client_state, save_latest=False)
            background = self._write_files(engine)
        self.last_saved_step = step
        upload = self._upload_job(self.local_dir / tag, step, dict(metrics), background)
        if self.policy.async_upload:
            self._pending = self._pool.submit(upload)
        else:
            upload()
        self.stall_seconds[step] = time.perf_counter() - started
        if background is not None:
            self._writing = (step, background)
        else:
            self._settled.append((step, self.stall_seconds[step], 0.0))

    def _write_files(self, engine: Any) -> BackgroundWrite | None:
        """Write what DeepSpeed's save collected: in a forked child where it can, else here and now."""
        deferred = getattr(engine, "checkpoint_engine", None)
        if not isinstance(deferred, DeferredCheckpointEngine):
            return None  # an engine this writer was not attached to wrote its files itself
        files = deferred.take_pending()
        if can_fork_for(files):
            return BackgroundWrite(files, deferred.zip_serialization)
        write_files(files, deferred.zip_serialization)
        return None

    def wait_for_local_write(self, training: bool = True) -> None:
        """Training thread: block until the last checkpoint's files are written; raises LocalSaveError if they
        could not be. While training goes on, the wait counts as that checkpoint's stall."""
        if self._writing is None:
            return
        step, background = self._writing
        self._writing = None
        waited_from = time.perf_counter()
        try:
            background.result()
        finally:
            if training:
                self.stall_seconds[step] += time.perf_counter() - waited_from
            self._settled.append((step, self.stall_seconds[step], background.seconds or 0.0))

    def settled(self) -> list[tuple[int, float, float]]:
        """(step, seconds training waited for it, seconds its background write took) of each checkpoint whose
        files are written since the last call."""
        settled, self._settled = self._settled, []
        return settled

    def _upload_job(self, directory: Path, step: int, metrics: dict[str, float],
                    background: BackgroundWrite | None) -> Callable[[], None]:
        def run() -> None:
            try:
                if background is not None:
                    background.result()
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
            except LocalSaveError:
                pass  # nothing to upload; the training thread raises it (wait_for_local_write)
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

    def wait(self, training: bool = True) -> None:
        self.wait_for_local_write(training)
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            raise StorageError(f"{self.failures_in_a_row} checkpoints in a row could not be uploaded to "
                               f"{self.store.uri}; last error: {self.last_error}")

    def close(self) -> None:
        self.wait(training=False)  # the job's end waits for its last checkpoint; training does not
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
