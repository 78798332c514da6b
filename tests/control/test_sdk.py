"""The Python SDK without a cluster: specs and overrides, errors shared with the CLI, reading what runs left.

Jobs and campaigns here are index records plus the storage a run leaves; tests/e2e/test_sdk.py drives real
ones through the SDK only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.control.index import JobIndex, JobRecord
from orchestrator.control.sdk import BestTrial, CheckpointInfo, Client, JobStatus, Trial
from orchestrator.control.sdk.specs import load_campaign, load_job_spec, override_pairs
from orchestrator.core import checkpoints as ck
from orchestrator.core.errors import NotFoundError, OrchError, SpecError
from orchestrator.core.states import JobState
from orchestrator.storage import open_store
from tests.paths import EXAMPLES, REPO_ROOT


def _job(home: Path, job_id: str = "mlp-1", state: JobState = JobState.SUCCEEDED) -> str:
    store = open_store((home / "storage" / "jobs" / job_id).as_uri())
    rows = [{"step": s, "loss": 2.0 / s, "samples_per_s": 50.0} for s in (10, 20, 30)]
    store.put_bytes("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    JobIndex(home / "jobs.db").insert(JobRecord(id=job_id, name="mlp", state=state, storage_uri=store.uri,
                                                spec={"train": {"steps": 30}}, metrics={"step": 30, "loss": 0.07}))
    return store.uri


def _commit(store, tmp: Path, step: int) -> None:
    local = tmp / f"shard-{step}.pt"
    local.write_bytes(b"x" * 100)
    store.put_file(f"{ck.step_prefix(step)}/shard.pt", local)
    ck.write_rank_part(store, step, 0, [ck.file_entry(local, "shard.pt")])
    assert ck.try_commit(store, step, 1, {"loss": 1.0 / step}, "hash") is not None


def test_overrides_as_a_dict_mean_what_set_means():
    assert override_pairs({"train.lr": 0.01, "name": "run-1", "model.hidden_sizes": [8]}) == [
        "train.lr=0.01", 'name="run-1"', "model.hidden_sizes=[8]"]
    spec = load_job_spec(EXAMPLES / "mlp-digits.yaml", {"train.steps": 40, "name": "yes", "model.hidden_sizes": [8]})
    assert (spec.train.steps, spec.name, spec.model["hidden_sizes"]) == (40, "yes", [8])
    assert load_job_spec({"name": "inline", "workload": "mlp"}, ["train.steps=7"]).train.steps == 7
    with pytest.raises(SpecError, match="overrides must be a dict"):
        override_pairs("train.lr=1")


def test_errors_are_the_cli_errors_with_the_same_messages(tmp_path: Path):
    with pytest.raises(SpecError) as raised:
        Client(home=tmp_path).submit(tmp_path / "missing.yaml")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}, "ORCH_HOME": str(tmp_path)}
    cli = subprocess.run([sys.executable, "-m", "orchestrator", "submit", str(tmp_path / "missing.yaml")],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and str(raised.value) in " ".join(cli.stderr.split())
    with pytest.raises(SpecError, match="field 'train.lr'"):
        Client(home=tmp_path).submit(EXAMPLES / "mlp-digits.yaml", {"train.lr": -1})
    with pytest.raises(NotFoundError):
        Client(home=tmp_path).job("nope-1")
    assert not (tmp_path / "storage").exists()  # refused before anything was written


def test_an_mlflow_uri_comes_from_the_spec_or_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert load_job_spec(EXAMPLES / "mlp-digits.yaml").tracking.mlflow is None
    with pytest.raises(SpecError, match="tracking.mlflow.uri' is not set and MLFLOW_TRACKING_URI is empty"):
        load_job_spec(EXAMPLES / "mlp-digits.yaml", {"tracking.mlflow.experiment": "x"})
    with pytest.raises(SpecError, match="must not carry credentials") as raised:
        load_job_spec(EXAMPLES / "mlp-digits.yaml", {"tracking.mlflow.uri": "http://me:pw@host:5000"})
    assert "pw@" not in str(raised.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    spec = load_job_spec(EXAMPLES / "mlp-digits.yaml")
    assert spec.tracking.mlflow.uri == "http://127.0.0.1:5000" and spec.tracking.mlflow.experiment == "orch"
    assert spec.redacted()["tracking"]["mlflow"]["uri"] == "http://127.0.0.1:5000"  # stored for the driver
    campaign = load_campaign(EXAMPLES / "tune-mlp-asha.yaml", {"num_samples": 2})
    assert campaign.base["tracking"]["mlflow"]["uri"] == "http://127.0.0.1:5000"


def test_a_finished_job_reads_back_as_typed_values(tmp_path: Path):
    uri = _job(tmp_path)
    _commit(open_store(uri), tmp_path, 30)
    client = Client(home=tmp_path)
    job = client.job("mlp-1")
    status = job.status()
    assert isinstance(status, JobStatus) and status.done and status.succeeded and status.metrics["loss"] == 0.07
    assert [r["step"] for r in job.metrics()] == [10, 20, 30]
    frame = job.metrics(as_frame=True)
    assert list(frame["step"]) == [10, 20, 30] and frame["loss"].iloc[-1] == pytest.approx(2.0 / 30)
    (checkpoint,) = job.checkpoints()
    assert isinstance(checkpoint, CheckpointInfo) and checkpoint.step == 30 and checkpoint.verified
    assert [v.ok for v in job.verify()] == [True]
    assert [s.id for s in client.jobs(state="succeeded")] == ["mlp-1"] and client.jobs(state="RUNNING") == []
    with pytest.raises(OrchError, match="is already SUCCEEDED; nothing to cancel"):
        job.cancel()
    with pytest.raises(OrchError, match="only FAILED or CANCELLED jobs can be resumed"):
        job.resume()


def test_a_campaign_gives_its_trials_and_best_trial(tmp_path: Path):
    store = open_store((tmp_path / "storage" / "campaigns" / "sweep-1").as_uri())
    trials = [{"id": f"t{i}", "state": "SUCCEEDED" if i else "STOPPED", "config": {"train.lr": 0.1 * (i + 1)},
               "last_metric": 0.5 + i, "last_metric_step": 20, "best_metric": 0.4 + i, "steps": 20,
               "early_stopped": i == 0, "store_uri": f"{store.uri}/trials/t{i}", "reason": ""} for i in range(2)]
    best = {"id": "t0", "metric": "loss", "value": 0.5, "step": 20, "state": "STOPPED", "config": {"train.lr": 0.1},
            "checkpoint_step": None, "checkpoint_uri": None}
    store.put_bytes("campaign.json", json.dumps({"metric": "loss", "mode": "min", "trials": trials,
                                                 "best_trial": best}).encode())
    store.put_bytes("trials/t0/spec.yaml", b"name: sweep\n")
    store.put_bytes("trials/t0/metrics.jsonl", b'{"step": 20, "loss": 0.5}\n')
    JobIndex(tmp_path / "jobs.db").insert(JobRecord(
        id="sweep-1", name="sweep", kind="campaign", state=JobState.SUCCEEDED, storage_uri=store.uri,
        spec={"campaign": {"metric": "loss", "mode": "min"}}))
    campaign = Client(home=tmp_path).campaign("sweep-1")
    assert campaign.trials() == [Trial.from_summary(t) for t in trials]
    assert campaign.trials()[0].early_stopped and campaign.trials()[1].value == 1.5
    assert campaign.best_trial() == BestTrial.from_summary(best)
    assert campaign.metrics() == [{"step": 20, "loss": 0.5}]  # the best trial's rows
    with pytest.raises(OrchError, match="has no trial 't9'"):
        campaign.metrics(trial="t9")


def test_a_campaign_starts_the_background_scheduler_as_a_job_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Without it nothing followed a campaign after `orch tune` exited, nor stopped its embedded cluster once idle.
    import orchestrator.control.campaigns as campaigns
    import orchestrator.control.scheduler as scheduler

    started: list[Path] = []
    monkeypatch.setattr(scheduler, "ensure_scheduler", started.append)
    monkeypatch.setattr(campaigns, "submit_campaign", lambda manager, campaign: JobRecord(
        id="c1", name="c", state=JobState.QUEUED, storage_uri="file:///nowhere", spec={}, kind="campaign"))
    client = Client(home=tmp_path / "home")
    campaign = client.tune(EXAMPLES / "tune-mlp-asha.yaml")
    assert campaign.id == "c1" and started == [client.manager.home]


def test_import_orchestrator_stays_light():
    code = ("import sys, orchestrator\nassert 'orchestrator.control' not in sys.modules\n"
            "from orchestrator import Client\n"
            "print(sorted(m for m in ('torch', 'ray', 'deepspeed', 'mlflow', 'pandas') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
