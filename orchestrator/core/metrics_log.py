"""metrics.jsonl and TensorBoard event files in storage, written by rank 0 only.

Object stores cannot append, so rank 0 keeps the rows and rewrites the (small) file at each report.
On resume the rows after the restored step are dropped, so the curve continues where the checkpoint
left off instead of showing the lost steps twice.

The same numbers go to a TensorBoard event file written locally and uploaded whole to
`tensorboard/<event file>` at each report (`tensorboard --logdir <job storage>/tensorboard`, or s3://).
Each attempt writes its own file; a resumed one starts with a purge marker at the restored step, so
TensorBoard drops the previous attempt's points after it, like metrics.jsonl does.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from orchestrator.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)
METRICS_KEY = "metrics.jsonl"
TENSORBOARD_PREFIX = "tensorboard/"
NOT_SCALARS = {"step", "final", "time"}


def read_jsonl(store: ObjectStore, key: str = METRICS_KEY) -> list[dict[str, Any]]:
    """The rows of a JSON-lines object; [] if it is missing. A damaged line (a copy cut short by a full disk or
    a sync tool) is skipped, so one bad row never hides a job's whole history."""
    try:
        raw = store.get_bytes(key).decode(errors="replace")
    except StorageError:
        return []
    rows = []
    for line in raw.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class MetricsLog:
    def __init__(self, store: ObjectStore, enabled: bool, tensorboard: bool = True):
        self.store, self.enabled = store, enabled
        self.rows: list[dict[str, Any]] = []
        self._tensorboard = tensorboard and enabled
        self._writer: Any = None
        self._purge_step: int | None = None
        # Background writes: a report must not wait out a storage outage (each write retries with backoff).
        self._lock = threading.Lock()
        self._pending: str | None = None
        self._flusher: threading.Thread | None = None

    def resume_from(self, step: int) -> None:
        if not self.enabled:
            return
        old = read_jsonl(self.store)
        self.rows = [r for r in old if r.get("step", 0) <= step and not r.get("final")]
        if old:
            self._purge_step = step + 1
        self.flush()

    def add(self, row: dict[str, Any], flush: bool, background: bool = False) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        self._add_scalars(row)
        if flush:
            self.flush(wait=not background)

    def note_checkpoint(self, step: int, stall_s: float, write_s: float | None = None) -> None:
        """Add to step's row how long training waited for its checkpoint and, when a forked child wrote the
        files, how long that took; written with the next flush."""
        if not self.enabled:
            return
        for row in reversed(self.rows):
            if row.get("step") == step and not row.get("final"):
                row["checkpoint_stall_s"] = round(stall_s, 4)
                if write_s:
                    row["checkpoint_write_s"] = round(write_s, 3)
                return

    def latest(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for row in self.rows:
            merged.update(row)
        return merged

    def flush(self, wait: bool = True) -> None:
        """Rewrite metrics.jsonl (and upload the event files). `wait=False` hands the write to a background
        thread, newest rows winning, so training goes on while storage retries; `wait=True` (resume, the final
        row) returns once everything is written."""
        if not self.enabled:
            return
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows)
        with self._lock:
            self._pending = body
            if self._flusher is None and not wait:
                self._flusher = threading.Thread(target=self._write_pending, name="orch-metrics", daemon=True)
                self._flusher.start()
            flusher = self._flusher
        if wait:
            if flusher is not None:
                flusher.join()
            self._write_pending()

    def _write_pending(self) -> None:
        while True:
            with self._lock:
                body, self._pending = self._pending, None
                if body is None:
                    if self._flusher is threading.current_thread():
                        self._flusher = None
                    return
            try:
                self.store.put_bytes(METRICS_KEY, body.encode())
            except StorageError as exc:  # metrics are rewritten whole next time; training goes on
                log.warning("metrics not written (will retry at the next report): %s", exc)
            self._upload_events()

    # ---- TensorBoard -----------------------------------------------------------------------------------
    def _events_writer(self) -> Any:
        if self._writer is None and self._tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # tensorboard not installed on the workers: metrics.jsonl still works
                log.warning("TensorBoard events not written: %s", exc)
                self._tensorboard = False
                return None
            local = Path(tempfile.mkdtemp(prefix="orch-tensorboard-"))
            weakref.finalize(self, shutil.rmtree, local, True)
            self._writer = SummaryWriter(log_dir=str(local), purge_step=self._purge_step)
        return self._writer

    def _add_scalars(self, row: dict[str, Any]) -> None:
        writer = self._events_writer()
        if writer is None or "step" not in row:
            return
        for key, value in row.items():
            if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                writer.add_scalar(key, value, global_step=int(row["step"]))

    def _upload_events(self) -> None:
        if self._writer is None:
            return
        self._writer.flush()
        for path in Path(self._writer.log_dir).glob("events.out.tfevents.*"):
            try:
                self.store.put_bytes(TENSORBOARD_PREFIX + path.name, path.read_bytes())
            except StorageError as exc:  # uploaded whole again at the next report
                log.warning("TensorBoard events not uploaded (will retry at the next report): %s", exc)
