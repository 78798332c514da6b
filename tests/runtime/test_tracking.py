"""MLflow mirroring from the driver, against a real `mlflow server` (SQLite backend) on 127.0.0.1.

The stores are written here the way a run writes them (metrics.jsonl, campaign.json, trial stores); the e2e
test tests/e2e/test_sdk.py does the same with real jobs and a real campaign.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.control.sdk.specs import load_job_spec
from orchestrator.core.run import read_result, read_tracking, write_result, write_spec
from orchestrator.runtime import tracking
from orchestrator.runtime.tracking_runs import CampaignTracking, JobTracking
from orchestrator.storage import ObjectStore, open_store
from tests.mlflowserver import MlflowServer, free_port
from tests.paths import EXAMPLES

SECRET = "hunter2-never-in-mlflow"


@pytest.fixture(autouse=True)
def fast_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "SYNC_EVERY_S", 0.2)


def _rows(store: ObjectStore, steps: range, final: bool = False) -> None:
    rows = [{"step": s, "loss": 3.0 / s, "samples_per_s": 100.0 + s, "time": "2026-12-04T10:00:00+00:00"}
            for s in steps]
    if final:
        rows.append({"step": steps[-1], "final": True, "final_loss": 3.0 / steps[-1]})
    store.put_bytes("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


def _spec(uri: str, experiment: str) -> Any:
    return load_job_spec(EXAMPLES / "mlp-digits.yaml", {"tracking.mlflow.uri": uri,
                                                        "tracking.mlflow.experiment": experiment,
                                                        "env.API_TOKEN": SECRET, "env.PLAIN": "also-secret",
                                                        "public_env.MODE": "visible"})


def _wait(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_job_run_gets_params_metrics_by_step_tags_and_its_checkpoint_location(mlflow_server: MlflowServer,
                                                                                 tmp_path: Path):
    experiment = f"job-{uuid.uuid4().hex[:8]}"
    store = open_store(str(tmp_path / "jobs" / "j-1"))
    spec = _spec(mlflow_server.uri, experiment)
    write_spec(store, spec.redacted())
    _rows(store, range(1, 4))
    mirror = JobTracking(spec, "j-1", store)
    # Rows arrive while it runs, and are logged in rounds, not at the end.
    _wait(lambda: (read_tracking(store).get("mlflow") or {}).get("rows_logged") == 3, "the first rows")
    _rows(store, range(1, 7), final=True)
    mirror.finish("SUCCEEDED")
    result = write_result(store, "SUCCEEDED")

    (run,) = mlflow_server.runs(experiment)
    assert run.info.status == "FINISHED" and run.info.run_name == "j-1"
    history = mlflow_server.client().get_metric_history(run.info.run_id, "loss")
    assert [(m.step, round(m.value, 6)) for m in history] == [(s, round(3.0 / s, 6)) for s in range(1, 7)]
    assert {m.key for m in mlflow_server.client().get_metric_history(run.info.run_id, "final_loss")} == {"final_loss"}
    params = run.data.params
    assert params["train.steps"] == "300" and params["workload"] == "mlp" and params["public_env.MODE"] == "visible"
    assert "env.API_TOKEN" not in params and SECRET not in json.dumps(params)
    assert "also-secret" not in json.dumps(params)  # every env value is secret, whatever its name
    tags = run.data.tags
    assert tags["orch.job_id"] == "j-1" and tags["orch.storage_uri"] == store.uri
    assert tags["orch.checkpoints_uri"] == f"{store.uri}/checkpoints" and tags["orch.state"] == "SUCCEEDED"
    report = result["tracking"]["mlflow"]
    assert report["errors"] == 0 and report["run"]["run_id"] == run.info.run_id and report["rows_logged"] == 7


def test_a_resumed_job_continues_its_run(mlflow_server: MlflowServer, tmp_path: Path):
    experiment = f"resume-{uuid.uuid4().hex[:8]}"
    store = open_store(str(tmp_path / "jobs" / "j-2"))
    spec = _spec(mlflow_server.uri, experiment)
    _rows(store, range(1, 4))
    JobTracking(spec, "j-2", store).finish("FAILED")
    _rows(store, range(1, 8))  # the next driver restores step 3 and trains on
    JobTracking(spec, "j-2", store).finish("SUCCEEDED")
    (run,) = mlflow_server.runs(experiment)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in mlflow_server.client().get_metric_history(run.info.run_id, "loss")]
    assert steps == list(range(1, 8))


def test_a_tracker_that_is_down_never_fails_or_holds_the_run_and_is_counted(tmp_path: Path):
    store = open_store(str(tmp_path / "jobs" / "j-3"))
    spec = _spec(f"http://127.0.0.1:{free_port()}", "nowhere")
    _rows(store, range(1, 4))
    started = time.monotonic()
    mirror = JobTracking(spec, "j-3", store)
    _wait(lambda: (read_tracking(store).get("mlflow") or {}).get("errors", 0) >= 2, "counted failures")
    mirror.finish("SUCCEEDED")
    assert time.monotonic() - started < 30
    write_result(store, "SUCCEEDED")
    report = read_result(store)["tracking"]["mlflow"]
    assert report["errors"] >= 3 and report["rows_logged"] == 0 and "Connection refused" in report["last_error"]
    assert report["run"]["run_id"] is None


def _campaign_store(root: Path, uri: str, experiment: str) -> tuple[ObjectStore, dict[str, Any]]:
    store = open_store(str(root / "campaigns" / "c-1"))
    base = _spec(uri, experiment).redacted()
    record = {"campaign": {"name": "c", "metric": "loss", "mode": "min", "num_samples": 3}, "base": base,
              "max_t": 6}
    trials = []
    for i, state in enumerate(["SUCCEEDED", "STOPPED", "RUNNING", "PENDING"]):
        trial_store = store.child(f"trials/t{i}")
        if state != "PENDING":
            write_spec(trial_store, {**base, "train": {**base["train"], "lr": 0.01 * (i + 1)}})
            _rows(trial_store, range(1, 7 - i))
        trials.append({"id": f"t{i}", "state": state, "config": {"train.lr": 0.01 * (i + 1)}})
    summary = {"id": "c-1", "metric": "loss", "mode": "min", "trials": trials, "total_steps": 15,
               "best_trial": {"id": "t0", "value": 0.5, "checkpoint_uri": None}}
    store.put_bytes("campaign.json", json.dumps(summary).encode())
    return store, record


def test_a_campaign_is_a_parent_run_with_one_child_run_per_trial(mlflow_server: MlflowServer, tmp_path: Path):
    experiment = f"campaign-{uuid.uuid4().hex[:8]}"
    store, record = _campaign_store(tmp_path, mlflow_server.uri, experiment)
    CampaignTracking("c-1", record, store).finish("SUCCEEDED")
    runs = {r.info.run_name: r for r in mlflow_server.runs(experiment)}
    assert set(runs) == {"c-1", "c-1-t0", "c-1-t1", "c-1-t2"}  # a trial that never started has no run
    parent = runs["c-1"]
    assert parent.info.status == "FINISHED" and parent.data.tags["orch.best_trial"] == "t0"
    assert parent.data.metrics["best_loss"] == 0.5 and parent.data.params["campaign.metric"] == "loss"
    for name, status, steps in (("c-1-t0", "FINISHED", 6), ("c-1-t1", "FINISHED", 5), ("c-1-t2", "KILLED", 4)):
        child = runs[name]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == status, name
        history = mlflow_server.client().get_metric_history(child.info.run_id, "loss")
        assert [m.step for m in history] == list(range(1, steps + 1))
    assert runs["c-1-t1"].data.params["trial.train.lr"] == "0.02"
    assert SECRET not in json.dumps({n: r.data.params for n, r in runs.items()})
    assert read_tracking(store)["mlflow"]["errors"] == 0
