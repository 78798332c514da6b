"""metrics.jsonl in storage: one JSON line per report, written by rank 0 only.

Object stores cannot append, so rank 0 keeps the rows and rewrites the (small) file at each report.
On resume the rows after the restored step are dropped, so the curve continues where the checkpoint
left off instead of showing the lost steps twice.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from orchestrator.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)
METRICS_KEY = "metrics.jsonl"


class MetricsLog:
    def __init__(self, store: ObjectStore, enabled: bool):
        self.store, self.enabled = store, enabled
        self.rows: list[dict[str, Any]] = []

    def resume_from(self, step: int) -> None:
        if not self.enabled:
            return
        try:
            raw = self.store.get_bytes(METRICS_KEY).decode()
        except StorageError:
            raw = ""
        old = [json.loads(line) for line in raw.splitlines() if line.strip()]
        self.rows = [r for r in old if r.get("step", 0) <= step and not r.get("final")]
        self.flush()

    def add(self, row: dict[str, Any], flush: bool) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        if flush:
            self.flush()

    def note_checkpoint(self, step: int, stall_s: float) -> None:
        if self.enabled and self.rows and self.rows[-1].get("step") == step:
            self.rows[-1]["checkpoint_stall_s"] = stall_s

    def latest(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for row in self.rows:
            merged.update(row)
        return merged

    def flush(self) -> None:
        if not self.enabled:
            return
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows)
        try:
            self.store.put_bytes(METRICS_KEY, body.encode())
        except StorageError as exc:  # metrics are rewritten whole next time; training goes on
            log.warning("metrics not written (will retry at the next report): %s", exc)
