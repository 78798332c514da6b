"""A notebook, end to end: a job and a small campaign driven through the Python SDK only, tracked in a real
MLflow server, watched live in `orch ui` through headless Chromium.

Real parts: the session's local Ray cluster, DeepSpeed workers, file storage, `mlflow server` (SQLite) and
Chromium. Nothing here runs the `orch` command except `orch ui`, which is a server, not a call.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chromium import chromium, dump_url
from tests.mlflowserver import MlflowServer
from tests.paths import EXAMPLES, REPO_ROOT

pytestmark = pytest.mark.e2e
JOB_TIMEOUT_S = 600
CAMPAIGN_TIMEOUT_S = 900


@pytest.fixture
def notebook_env(ray_cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's environment as a notebook on this machine would have it (the test cluster, its caches)."""
    home = tmp_path / "orch-home"
    for name in [k for k in os.environ if k.startswith(("AWS_", "ORCH_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    for name in ("RAY_TMPDIR", "TORCH_EXTENSIONS_DIR", "ORCH_RAY_ADDRESS"):
        monkeypatch.setenv(name, ray_cluster[name])
    monkeypatch.setenv("ORCH_HOME", str(home))  # for the background scheduler the SDK starts
    return home


@pytest.fixture
def ui(notebook_env: Path) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", "0"], cwd=REPO_ROOT,
                            env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_notebook_runs_a_job_and_a_campaign_through_the_sdk(notebook_env: Path, ui: str,
                                                             mlflow_server: MlflowServer, tmp_path: Path):
    chromium()  # before any work: without a browser this test is skipped, never passed
    from orchestrator import Client

    client = Client(address=os.environ["ORCH_RAY_ADDRESS"], home=notebook_env)
    tracking = {"tracking.mlflow.uri": mlflow_server.uri, "tracking.mlflow.experiment": "notebook"}

    # ---- a job -------------------------------------------------------------------------------------------
    job = client.submit(EXAMPLES / "mlp-digits.yaml", overrides={
        "train.steps": 60, "train.warmup_steps": 5, "train.report_every": 5, "train.eval_every": 30,
        "checkpoint.every_steps": 30, **tracking})
    # The page, opened while the job starts, stays open until it ends: its curves grow with each report.
    dom = dump_url(f"{ui}#job={job.id}", virtual_time_ms=4000, timeout=JOB_TIMEOUT_S)
    seen: list[str] = []
    status = job.wait(timeout=JOB_TIMEOUT_S, on_progress=lambda s: seen.append(s.state))
    assert status.succeeded, status.message
    assert seen[-1] == "SUCCEEDED"

    rows = job.metrics()
    trained = [r for r in rows if "loss" in r and not r.get("final")]
    steps = [r["step"] for r in trained]
    assert steps == sorted(set(steps)) and steps[-1] == 60 and set(range(5, 61, 5)) <= set(steps)
    frame = job.metrics(as_frame=True)
    assert frame["loss"].dropna().iloc[-1] == pytest.approx(trained[-1]["loss"])
    history = [int(n) for n in re.search(r'data-row-history="([\d,]+)"', dom).group(1).split(",")]
    assert len(set(history)) >= 2 and history == sorted(history), history  # redrawn as rows came in
    assert history[-1] == len(rows) and re.search(rf'data-series="loss"[^>]*data-points="{len(trained)}"', dom)

    assert [c.step for c in job.checkpoints() if c.committed and c.verified] == [30, 60]
    exported = job.export(tmp_path / "model.safetensors")
    assert exported.step == 60 and exported.parameters > 10_000 and Path(exported.path).stat().st_size > 0
    assert "[rank 0]" in job.logs()
    assert status.tracking["mlflow"]["errors"] == 0

    (run,) = [r for r in mlflow_server.runs("notebook") if r.info.run_name == job.id]
    assert run.info.status == "FINISHED"
    losses = mlflow_server.client().get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in losses) == [(r["step"], r["loss"]) for r in trained]
    assert run.data.tags["orch.ray_job_id"] == job.id  # its first (and only) Ray submission
    assert run.data.tags["orch.latest_checkpoint_uri"].endswith("/checkpoints/step-000060")
    assert run.data.params["train.steps"] == "60"

    # ---- a small campaign ------------------------------------------------------------------------------------
    campaign = client.tune({
        "name": "nb-sweep", "base": "mlp-digits.yaml",
        "overrides": {"train.steps": 20, "train.warmup_steps": 2, "train.report_every": 5, "train.eval_every": 10,
                      "checkpoint.every_steps": 10, "checkpoint.keep_best": 0, "failure.max_restarts": 0,
                      **tracking},
        "search_space": {"train.lr": {"type": "grid", "values": [0.001, 0.01]}},
        "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"},
        "metric": "eval_accuracy", "mode": "max", "num_samples": 1, "trial_resources": {"num_workers": 1},
        "max_concurrent_trials": 1,  # one trial process at a time: the machine's memory is shared
    }, base_dir=EXAMPLES)
    status = campaign.wait(timeout=CAMPAIGN_TIMEOUT_S)
    assert status.succeeded, status.message
    trials = campaign.trials()
    assert len(trials) == 2 and {t.state for t in trials} == {"SUCCEEDED"}
    assert sorted(t.config["train.lr"] for t in trials) == [0.001, 0.01]
    best = campaign.best_trial()
    assert best is not None and best.value == max(t.value for t in trials) and best.checkpoint_uri
    assert [s.id for s in client.jobs(kind="campaign")] == [campaign.id]
    assert {s.id for s in client.jobs(state="SUCCEEDED")} == {job.id, campaign.id}

    runs = {r.info.run_name: r for r in mlflow_server.runs("notebook")}
    parent = runs[campaign.id]
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(f"{campaign.id}-{t.id}" for t in trials)
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    assert parent.data.tags["orch.best_trial"] == best.id
    for child in children:
        accuracy = mlflow_server.client().get_metric_history(child.info.run_id, "eval_accuracy")
        assert [m.step for m in accuracy if m.step < 20] == [10]
