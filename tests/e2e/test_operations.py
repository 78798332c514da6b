"""Day-to-day operation through the CLI: an embedded cluster that stops itself when idle, `cluster down` that
refuses to kill running jobs (or cancels them, for good, with --cancel), readable `orch logs`, and commands
whose output is only their own.

The cluster tests start their own embedded cluster in their own ORCH_HOME and stop only that one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.control.index import JobIndex
from orchestrator.control.local_cluster import _pid_alive
from orchestrator.control.scheduler import scheduler_running
from tests.e2e.conftest import EXTENSIONS_CACHE, REPO, Orch, wait_for
from tests.embedded_clusters import stop_embedded_cluster

pytestmark = pytest.mark.e2e

TINY_MLP = ("scaling.num_workers=1", "train.steps=5", "train.warmup_steps=0", "train.eval_every=0",
            "train.eval_batches=1", "checkpoint.every_steps=0")
IDLE = "8s"


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Orch]:
    """An ORCH_HOME with its own embedded cluster (started by the test through the CLI), idle stop at 8 s."""
    home = tmp_path / "orch-home"
    ray_tmp = tempfile.mkdtemp(prefix="orch-ops-", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORCH_"))},
           "ORCH_HOME": str(home), "RAY_TMPDIR": ray_tmp, "TORCH_EXTENSIONS_DIR": str(EXTENSIONS_CACHE),
           "PYTHONUNBUFFERED": "1", "ORCH_IDLE_STOP_S": IDLE}
    orch = Orch(home=home, env=env)
    try:
        yield orch
    finally:
        stop_embedded_cluster(home, env)


def _cluster(orch: Orch) -> dict | None:
    path = orch.home / "cluster" / "cluster.json"
    return json.loads(path.read_text()) if path.exists() else None


def _stopped(orch: Orch, pid: int) -> bool:
    return _cluster(orch) is None and not _pid_alive(pid)


def test_idle_cluster_stops_itself_and_the_next_submit_starts_it_again(own: Orch) -> None:
    up = own.run("cluster", "up", "--idle-stop", IDLE, timeout=180)
    first = _cluster(own)
    assert first is not None and first["idle_stop_s"] == 8
    status = own.run("cluster", "status", timeout=60).stdout
    assert "stops by itself at" in status, status
    wait_for(lambda: _stopped(own, first["pid"]), timeout=90, what="the idle cluster to stop itself")
    assert "stopped the local Ray cluster after 8 s idle" in (own.home / "scheduler.log").read_text()
    assert "No local Ray cluster is running" in own.run("cluster", "status").stdout, up.stdout

    job_id, _ = own.submit("jobs/examples/mlp-digits.yaml", *TINY_MLP, wait=False, timeout=300)
    second = _cluster(own)
    assert second is not None and second["pid"] != first["pid"]
    assert "in use (1 active job)" in own.run("cluster", "status").stdout
    wait_for(lambda: own.status(job_id)["state"] in ("SUCCEEDED", "FAILED"), timeout=300, what="the job to end")
    assert own.status(job_id)["state"] == "SUCCEEDED"
    # Started by a submit, it is watched the same way: once the job is done it stops again.
    wait_for(lambda: _stopped(own, second["pid"]), timeout=90, what="the cluster to stop again after the job")
    assert "Traceback" not in (own.home / "scheduler.log").read_text()


def test_cluster_down_refuses_with_a_running_job_and_cancel_ends_it_for_good(own: Orch) -> None:
    own.run("cluster", "up", timeout=180)
    pid = _cluster(own)["pid"]
    job_id, _ = own.submit("jobs/examples/mlp-digits.yaml", "scaling.num_workers=1", "train.steps=100000",
                           "checkpoint.every_steps=0", "train.eval_every=0", "failure.max_restarts=3", wait=False,
                           timeout=300)
    # Past its first step, its workers have loaded DeepSpeed's compiled op: stopping a worker while it holds the
    # shared extension cache's build lock would leave the lock behind for every later job on this machine.
    wait_for(lambda: (own.storage / "jobs" / job_id / "metrics.jsonl").exists(), timeout=240, what="a first step")
    assert own.status(job_id)["state"] == "RUNNING"

    refused = own.run("cluster", "down", check=False, timeout=120)
    assert refused.returncode == 2
    assert job_id in refused.stderr and "--cancel" in refused.stderr and "Traceback" not in refused.stderr
    assert _pid_alive(pid) and own.status(job_id)["state"] == "RUNNING"

    down = own.run("cluster", "down", "--cancel", timeout=120)
    assert f"{job_id}: CANCELLED" in down.stdout
    assert _stopped(own, pid)
    # The background scheduler has nothing left to watch and exits; then no later command may bring it back.
    wait_for(lambda: not scheduler_running(own.home), timeout=60, what="the scheduler to exit")
    for _ in range(2):
        listed = {r["id"]: r for r in json.loads(own.run("list", "--json").stdout)}
        status = own.status(job_id)
        assert listed[job_id]["state"] == status["state"] == "CANCELLED"
        assert status["message"] == "cluster stopped" and status["attempts"] <= 1
        assert JobIndex(own.home / "jobs.db").get(job_id).submissions == 1  # never handed to Ray again
    assert _cluster(own) is None  # nothing started the cluster again to resubmit it
    assert "Traceback" not in (own.home / "scheduler.log").read_text()


# A workload whose rank 1 raises at step 6, after rank 0 has committed checkpoints.
FAILING = textwrap.dedent('''
    from orchestrator.workloads.mlp.train import train as mlp_train


    def train(ctx):
        after_step = ctx.after_step

        def checked(engine, step, metrics):
            after_step(engine, step, metrics)
            if ctx.rank == 1 and step == 6:
                raise RuntimeError("boom from rank 1 at step 6")

        ctx.after_step = checked
        return mlp_train(ctx)
''')


def test_logs_are_plain_per_rank_and_errors_come_first(orch: Orch, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "failing.py").write_text(FAILING)
    job_id, _ = orch.submit("jobs/examples/mlp-digits.yaml", "name=failing", "workload=failing:train",
                           f"working_dir={code}", "deepspeed.zero_stage=3", "train.l2=0", "train.steps=20",
                           "train.warmup_steps=0", "train.eval_every=0", "train.report_every=2",
                           "checkpoint.every_steps=2", "failure.max_restarts=0", check=False, timeout=400)
    assert orch.status(job_id)["state"] == "FAILED"

    logs = orch.run("logs", job_id).stdout  # captured: not a terminal
    assert "\x1b" not in logs
    assert "[rank 0] " in logs and "[rank 1] " in logs and "orch: step 4/20" in logs
    # DeepSpeed's ZeRO-3 collectives make torch warn on every call; silenced in the worker.
    assert "all_gather_into_tensor` is deprecated" not in logs and "reduce_scatter_tensor` is deprecated" not in logs
    rank1 = orch.run("logs", job_id, "--rank", "1").stdout.splitlines()
    assert rank1 and all(line.startswith("[rank 1] ") for line in rank1)
    since = orch.run("logs", job_id, "--since", "4").stdout.splitlines()
    assert "orch: step 4/20" in since[0] and not any("orch: step 2/20" in line for line in since)

    errors = orch.run("logs", job_id, "--errors").stdout.splitlines()
    assert errors[0].startswith("failure reason: ") and "boom from rank 1 at step 6" in errors[0], errors[:3]
    assert errors[1] == "--- traceback (rank 1) ---", errors[:3]
    assert errors[2] == "Traceback (most recent call last):"
    first_tb = errors[2:next(i for i, line in enumerate(errors) if i > 1 and line.startswith("---"))]
    assert first_tb[-1] == "RuntimeError: boom from rank 1 at step 6", first_tb

    # Commands that call into DeepSpeed or Ray print only their own output.
    for args in (("list",), ("status", job_id), ("verify", job_id),
                 ("export", job_id, "--out", str(tmp_path / "model.pt"))):
        proc = orch.run(*args, check=False)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr)


def test_estimate_json_prints_nothing_but_its_json(tmp_path: Path) -> None:
    # A user's environment: none of ours, and no DS_ACCELERATOR (set, DeepSpeed has no notice to print).
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "DS_"))}, "ORCH_HOME": str(tmp_path)}
    proc = subprocess.run(f"{sys.executable} -m orchestrator estimate jobs/examples/gpt-zero3.yaml --json "
                          "2>&1 >/dev/null", shell=True, cwd=REPO, env=env, text=True, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    verbose = subprocess.run([sys.executable, "-m", "orchestrator", "estimate", "jobs/examples/gpt-zero3.yaml",
                              "--json", "--verbose"], cwd=REPO, env=env, text=True, capture_output=True, timeout=120)
    assert json.loads(verbose.stdout)["params"] > 0
    assert "Setting accelerator to CPU" in verbose.stderr  # --verbose shows it, on stderr
