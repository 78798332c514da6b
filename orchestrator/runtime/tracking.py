"""Mirror runs to MLflow from the Ray job's driver: params, metrics by step, tags, the checkpoint location.

The training workers never talk to the tracker. A background thread in the driver reads what the run
already writes to storage (metrics.jsonl, result.json, campaign.json) every few seconds and logs what is
new in one batch per run. A tracker that is slow or down therefore never slows or fails training: each
failed call is counted, the rows stay pending for the next round, and the counts (plus the MLflow run ids)
go to `tracking.json` in the run's store, which `orch status` / `Job.status()` and result.json report.

mlflow is imported only when a spec configures tracking (`pip install 'orchestrator[tracking]'`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from orchestrator.core.run import read_metrics, read_tracking, write_tracking
from orchestrator.core.spec import SECRET_NAME_PATTERN
from orchestrator.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)
SYNC_EVERY_S = 3.0
FINAL_SYNC_S = 30.0  # how long a finished driver waits for its last batch before writing its verdict
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
NOT_METRICS = {"step", "final", "time"}
RUN_STATUS = {"SUCCEEDED": "FINISHED", "STOPPED": "FINISHED", "FAILED": "FAILED", "INTERRUPTED": "KILLED",
              "CANCELLED": "KILLED"}


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested spec data as MLflow params: dotted keys, string values; secret-looking env values never appear
    (they are redacted in stored specs already; this is the second lock)."""
    if isinstance(data, dict) and data:
        out: dict[str, str] = {}
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if prefix == "env" and SECRET_NAME_PATTERN.search(str(key)):
                continue
            out.update(flatten(value, name))
        return out
    text = json.dumps(data) if isinstance(data, (list, dict, bool)) or data is None else str(data)
    return {prefix: text[:MAX_PARAM_LENGTH]} if prefix else {}


class MlflowTracker:
    """One MLflow client with error accounting: every call goes through `call`, which never raises."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.errors = 0
        self.last_error = ""
        self._client: Any = None
        self._experiment_id: str | None = None

    def call(self, what: str, fn: Callable[[Any], Any]) -> tuple[bool, Any]:
        """(succeeded, result) of fn(client); a failure is counted and logged, never raised."""
        try:
            if self._client is None:
                # Fail fast instead of MLflow's default minutes of retries: the next round retries anyway.
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(tracking_uri=self.uri)
            return True, fn(self._client)
        except Exception as exc:  # the tracker is best effort by design: training must go on
            self.errors += 1
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.last_error = f"{what}: {type(exc).__name__}: {first_line}"[:500]
            log.warning("MLflow %s failed (will retry): %s", what, self.last_error[:300])
            return False, None

    def experiment_id(self) -> str | None:
        if self._experiment_id is None:
            def find_or_create(client: Any) -> str:
                found = client.get_experiment_by_name(self.experiment)
                if found is not None:
                    return found.experiment_id
                try:
                    return client.create_experiment(self.experiment)
                except Exception:  # created by another driver in between
                    return client.get_experiment_by_name(self.experiment).experiment_id

            ok, value = self.call("experiment lookup", find_or_create)
            self._experiment_id = value if ok else None
        return self._experiment_id

    def report(self) -> dict[str, Any]:
        return {"uri": self.uri, "experiment": self.experiment, "experiment_id": self._experiment_id,
                "errors": self.errors, "last_error": self.last_error}


class RunMirror:
    """One MLflow run mirroring one run store (a job, or a campaign trial): created on first sync, then only
    the metrics rows it has not logged yet. `state` carries its run id and progress across driver restarts."""

    def __init__(self, tracker: MlflowTracker, store: ObjectStore, name: str, tags: dict[str, str],
                 params: dict[str, str], state: dict[str, Any] | None = None, parent_run_id: str | None = None):
        self.tracker, self.store, self.name = tracker, store, name
        self.tags, self.params, self.parent_run_id = tags, params, parent_run_id
        state = state or {}
        self.run_id: str | None = state.get("run_id")
        self.logged_step: int = int(state.get("logged_step", -1))
        self.logged_final: bool = bool(state.get("logged_final", False))
        self.rows_logged: int = int(state.get("rows_logged", 0))
        self.terminated: str | None = state.get("terminated")

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "name": self.name, "logged_step": self.logged_step,
                "logged_final": self.logged_final, "rows_logged": self.rows_logged, "terminated": self.terminated}

    def ensure_run(self) -> bool:
        if self.run_id is not None:
            return True
        experiment_id = self.tracker.experiment_id()
        if experiment_id is None:
            return False
        tags = dict(self.tags)
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id

        def create(client: Any) -> str:
            from mlflow.entities import Param

            run = client.create_run(experiment_id, run_name=self.name, tags=tags)
            params = [Param(k, v) for k, v in sorted(self.params.items())]
            for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
                client.log_batch(run.info.run_id, params=params[i:i + MAX_PARAMS_PER_BATCH])
            return run.info.run_id

        ok, run_id = self.tracker.call("create run", create)
        if ok:
            self.run_id = run_id
        return ok

    def pending_rows(self) -> list[dict[str, Any]]:
        rows = read_metrics(self.store)
        return [r for r in rows if isinstance(r.get("step"), int)
                and (r["step"] > self.logged_step or (r.get("final") and not self.logged_final))]

    def sync(self) -> None:
        if not self.ensure_run():
            return
        rows = self.pending_rows()
        if not rows:
            return
        def send(client: Any) -> None:
            from mlflow.entities import Metric

            now_ms = int(time.time() * 1000)
            metrics = [Metric(key, float(value), _row_ms(row, now_ms), int(row["step"]))
                       for row in rows for key, value in row.items()
                       if key not in NOT_METRICS and not isinstance(value, bool) and isinstance(value, (int, float))
                       and math.isfinite(value)]
            for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])

        ok, _ = self.tracker.call("log metrics", send)
        if ok:
            self.logged_step = max(self.logged_step, *(int(r["step"]) for r in rows))
            self.logged_final = self.logged_final or any(r.get("final") for r in rows)
            self.rows_logged += len(rows)

    def finish(self, verdict: str, extra_tags: dict[str, str] | None = None) -> None:
        """Close the run with the verdict (once its rows are in)."""
        if self.terminated == verdict or not self.ensure_run():
            return
        self.sync()
        tags = {"orch.state": verdict, **(extra_tags or {})}

        def close(client: Any) -> None:
            for key, value in tags.items():
                client.set_tag(self.run_id, key, value)
            client.set_terminated(self.run_id, RUN_STATUS.get(verdict, "FINISHED"))

        ok, _ = self.tracker.call("end run", close)
        if ok:
            self.terminated = verdict


def _row_ms(row: dict[str, Any], default: int) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(str(row["time"])).timestamp() * 1000)
    except (KeyError, ValueError):
        return default


class Mirroring:
    """The background loop: `sync()` every few seconds on a daemon thread, `close()` once at the end."""

    def __init__(self, store: ObjectStore, tracker: MlflowTracker, sync: Callable[[], dict[str, Any]]):
        self.store, self.tracker, self._sync = store, tracker, sync
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="orch-mlflow", daemon=True)

    def start(self) -> Mirroring:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(SYNC_EVERY_S):
            self.round()

    def round(self, final: Callable[[], None] | None = None) -> None:
        with self._lock:
            try:
                report = self._sync()
                if final is not None:
                    final()
                    report = self._sync()
            except Exception as exc:  # a bug here must not take the driver down either
                self.tracker.errors += 1
                self.tracker.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("experiment tracking round failed: %s", exc)
                report = {}
            try:
                write_tracking(self.store, {"mlflow": {**self.tracker.report(), **report}})
            except StorageError as exc:
                log.warning("tracking.json not written (will retry): %s", exc)

    def close(self, final: Callable[[], None]) -> None:
        """Stop the loop, then one last round that ends the runs; bounded so a dead tracker cannot hold the
        driver's verdict back."""
        self._stop.set()
        closer = threading.Thread(target=self.round, kwargs={"final": final}, daemon=True)
        closer.start()
        closer.join(FINAL_SYNC_S)


def previous_state(store: ObjectStore) -> dict[str, Any]:
    """What an earlier driver of this run logged (a resumed job continues its MLflow run)."""
    return read_tracking(store).get("mlflow") or {}
