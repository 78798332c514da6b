"""Which MLflow runs a driver keeps: one per job; for a campaign a parent run with a child run per trial.

Used by orchestrator/runtime/driver.py and orchestrator/runtime/campaign/driver.py; the mechanics (batching,
error accounting, the background loop) are in orchestrator/runtime/tracking.py.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from orchestrator.core import checkpoints
from orchestrator.core.campaign_summary import read_summary
from orchestrator.core.run import read_spec, trial_key
from orchestrator.core.spec import JobSpec
from orchestrator.runtime.tracking import Mirroring, MlflowTracker, RunMirror, flatten, previous_state
from orchestrator.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)
ENDED_TRIAL_STATES = ("SUCCEEDED", "STOPPED", "FAILED")


def ray_job_id() -> str:
    """The Ray job's submission id (what `ray job list` shows), from the metadata orch gave it."""
    try:
        metadata = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata") or {}
    except ValueError:
        metadata = {}
    return str(metadata.get("orch_submission_id", ""))


def checkpoint_tags(store: ObjectStore) -> dict[str, str]:
    """Where the run's checkpoints are and which steps are committed."""
    try:
        steps = [c.step for c in checkpoints.list_checkpoints(store) if c.committed]
    except StorageError:
        steps = []
    tags = {"orch.checkpoints_uri": f"{store.uri}/checkpoints"}
    if steps:
        tags["orch.checkpoint_steps"] = ",".join(str(s) for s in steps)
        tags["orch.latest_checkpoint_uri"] = f"{store.uri}/{checkpoints.step_prefix(steps[-1])}"
    return tags


class JobTracking:
    """A job's driver: one MLflow run, continued by a resumed job's next driver."""

    def __init__(self, spec: JobSpec, job_id: str, store: ObjectStore):
        mlflow = spec.tracking.mlflow
        assert mlflow is not None and mlflow.uri
        self.store = store
        self.tracker = MlflowTracker(mlflow.uri, mlflow.experiment)
        tags = {"orch.job_id": job_id, "orch.ray_job_id": ray_job_id(), "orch.storage_uri": store.uri,
                "orch.workload": spec.workload, "orch.checkpoints_uri": f"{store.uri}/checkpoints"}
        self.run = RunMirror(self.tracker, store, job_id, tags, flatten(spec.redacted()),
                             state=previous_state(store).get("run"))
        self.loop = Mirroring(store, self.tracker, self._sync).start()

    def _sync(self) -> dict[str, Any]:
        self.run.sync()
        return {"run": self.run.state(), "rows_logged": self.run.rows_logged}

    def finish(self, verdict: str) -> None:
        self.loop.close(lambda: self.run.finish(verdict, checkpoint_tags(self.store)))


class CampaignTracking:
    """A campaign's driver: the campaign is the parent run; each trial becomes a child run when it first appears
    in campaign.json, and is closed when the campaign says it ended."""

    def __init__(self, campaign_id: str, record: dict[str, Any], store: ObjectStore):
        mlflow = (record["base"].get("tracking") or {}).get("mlflow") or {}
        self.campaign_id, self.store = campaign_id, store
        self.tracker = MlflowTracker(mlflow["uri"], mlflow.get("experiment") or "orch")
        previous = previous_state(store)
        params = {**flatten(record["campaign"], "campaign"), **flatten(record["base"], "base")}
        tags = {"orch.campaign_id": campaign_id, "orch.ray_job_id": ray_job_id(), "orch.storage_uri": store.uri,
                "orch.kind": "campaign"}
        self.parent = RunMirror(self.tracker, store, campaign_id, tags, params, state=previous.get("run"))
        self._trial_states: dict[str, dict[str, Any]] = previous.get("trials") or {}
        self.trials: dict[str, RunMirror] = {}
        self.loop = Mirroring(store, self.tracker, self._sync).start()

    def _child(self, trial: dict[str, Any]) -> RunMirror:
        trial_id = trial["id"]
        if trial_id not in self.trials:
            trial_store = self.store.child(trial_key(trial_id))
            try:
                params = flatten(read_spec(trial_store))
            except StorageError:
                params = {}
            params.update(flatten(trial.get("config") or {}, "trial"))
            tags = {"orch.campaign_id": self.campaign_id, "orch.trial_id": trial_id,
                    "orch.job_id": f"{self.campaign_id}-{trial_id}", "orch.storage_uri": trial_store.uri,
                    "orch.checkpoints_uri": f"{trial_store.uri}/checkpoints"}
            self.trials[trial_id] = RunMirror(self.tracker, trial_store, f"{self.campaign_id}-{trial_id}", tags,
                                              params, state=self._trial_states.get(trial_id),
                                              parent_run_id=self.parent.run_id)
        return self.trials[trial_id]

    def _sync(self, final_state: str | None = None) -> dict[str, Any]:
        if self.parent.ensure_run():
            summary = read_summary(self.store) or {}
            for trial in summary.get("trials", []):
                if trial.get("state") == "PENDING":
                    continue
                child = self._child(trial)
                child.parent_run_id = self.parent.run_id
                if trial["state"] in ENDED_TRIAL_STATES:
                    child.finish(trial["state"], checkpoint_tags(child.store))
                elif final_state is not None:
                    child.finish("INTERRUPTED")
                else:
                    child.sync()
            if final_state is not None:
                self._close_parent(final_state, summary)
        return {"run": self.parent.state(), "trials": {k: v.state() for k, v in self.trials.items()},
                "rows_logged": sum(t.rows_logged for t in self.trials.values())}

    def _close_parent(self, state: str, summary: dict[str, Any]) -> None:
        best = summary.get("best_trial") or {}
        tags = {"orch.best_trial": str(best.get("id", "")), "orch.best_value": str(best.get("value", "")),
                "orch.best_checkpoint_uri": str(best.get("checkpoint_uri") or "")}
        if best.get("value") is not None and self.parent.run_id:
            def log_best(client: Any) -> None:
                from mlflow.entities import Metric

                client.log_batch(self.parent.run_id, metrics=[Metric(
                    f"best_{summary.get('metric', 'metric')}", float(best["value"]), int(time.time() * 1000),
                    int(summary.get("total_steps") or 0))])

            self.tracker.call("log best", log_best)
        self.parent.finish(state, tags)

    def finish(self, state: str) -> None:
        self.loop.close(lambda: self._sync(final_state=state))


def start_job_tracking(spec: JobSpec, job_id: str, store: ObjectStore) -> JobTracking | None:
    """Mirroring for a job whose spec configures a tracker; None otherwise (and never an exception)."""
    if spec.tracking.mlflow is None or not spec.tracking.mlflow.uri:
        return None
    try:
        return JobTracking(spec, job_id, store)
    except Exception as exc:  # tracking is best effort; the job runs regardless
        log.warning("experiment tracking not started: %s", exc)
        return None


def start_campaign_tracking(campaign_id: str, record: dict[str, Any], store: ObjectStore) -> CampaignTracking | None:
    mlflow = ((record.get("base") or {}).get("tracking") or {}).get("mlflow") or {}
    if not mlflow.get("uri"):
        return None
    try:
        return CampaignTracking(campaign_id, record, store)
    except Exception as exc:
        log.warning("experiment tracking not started: %s", exc)
        return None
