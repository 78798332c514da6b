"""Scaling from zero, and replacing a lost node, on Ray's own fake autoscaling cluster (tests/autoscaling_cluster.py):
a head with no CPUs and an autoscaler whose one worker node type has min_workers 0, max_workers 2 and 1 CPU per node.

The worker nodes are real raylets the autoscaler starts and stops on this machine, so everything orch sees (the
nodes alive, the autoscaler's report, the Jobs API) is what a cloud cluster shows, only faster.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.autoscaling_cluster import OBJECT_STORE_BYTES, FakeAutoscalingCluster
from tests.e2e.conftest import EXTENSIONS_CACHE, REPO, Orch, attempts, committed_steps, metrics_rows, wait_for
from tests.e2e.test_multinode import _kill_schedulers

pytestmark = [pytest.mark.e2e, pytest.mark.e2e_timeout(600)]

MAX_NODES = 2
TINY_MLP = ["name=scale", "scaling.cpus_per_worker=1", "train.steps=6", "train.warmup_steps=0", "train.eval_every=0",
            "train.eval_batches=1", "train.report_every=2", "checkpoint.every_steps=0", "checkpoint.at_end=false",
            "failure.max_restarts=0"]


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[FakeAutoscalingCluster]:
    """One cluster for the module (a head takes 20-70 s to start here); each test leaves it scaled down."""
    EXTENSIONS_CACHE.mkdir(parents=True, exist_ok=True)
    # Ray's socket paths must stay short, so its temp dir is not under pytest's long tmp path.
    root = Path(tempfile.mkdtemp(prefix="orch-as-", dir="/tmp"))
    cluster = FakeAutoscalingCluster(
        root, {"cpu_worker": {"resources": {"CPU": 1, "object_store_memory": OBJECT_STORE_BYTES}, "node_config": {},
                              "min_workers": 0, "max_workers": MAX_NODES}},
        max_workers=MAX_NODES, idle_timeout_minutes=0.1,  # idle nodes go after ~6 s
        extra_env={"TORCH_EXTENSIONS_DIR": str(EXTENSIONS_CACHE)})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _sets(*overrides: str) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture
def orch_as(fake_cluster: FakeAutoscalingCluster, tmp_path: Path) -> Iterator[Orch]:
    """The `orch` CLI with its own ORCH_HOME, told the fake cluster's autoscaler config."""
    home = tmp_path / "orch-home"
    try:
        yield Orch(home=home, env={**fake_cluster.env, "ORCH_HOME": str(home),
                                   "ORCH_AUTOSCALER_CONFIG": str(fake_cluster.config_path)})
    finally:
        _kill_schedulers(home)  # a failed test may leave this home's background scheduler behind


def test_job_admitted_on_an_empty_autoscaling_cluster_scales_it_up_succeeds_and_it_scales_back_down(
        fake_cluster, orch_as):
    orch = orch_as
    url = fake_cluster.dashboard_url
    spec = str(REPO / "jobs/examples/mlp-digits.yaml")
    assert fake_cluster.worker_nodes() == []  # min_workers 0: nothing but the 0-CPU head

    # Past what the autoscaler may ever add: refused with the numbers, nothing recorded.
    too_big = orch.run("submit", spec, "--address", url, *_sets(*TINY_MLP, "scaling.num_workers=3"), check=False)
    assert too_big.returncode == 2, too_big.stderr
    assert "needs 3 CPUs and 0 GPUs (3 workers)" in too_big.stderr and "0 CPUs and 0 GPUs now" in too_big.stderr
    assert "can add at most 2 CPUs and 0 GPUs (2 more cpu_worker" in too_big.stderr, too_big.stderr
    assert "Traceback" not in too_big.stderr
    assert json.loads(orch.run("list", "--json").stdout) == []

    # Fits once the autoscaler adds both nodes: admitted and handed to Ray at once.
    started = time.monotonic()
    job_id = orch.run("submit", spec, "--address", url, *_sets(*TINY_MLP, "scaling.num_workers=2")
                      ).stdout.strip().splitlines()[-1]
    notes: set[str] = set()
    listed: set[str] = set()
    peak_nodes = 0
    deadline = time.monotonic() + 420
    while True:
        status = orch.status(job_id)
        notes.add(status["message"])
        peak_nodes = max(peak_nodes, len(fake_cluster.worker_nodes()))
        if not listed and status["message"].startswith("waiting for nodes"):
            listed.add(" ".join(orch.run("list", extra_env={"COLUMNS": "400"}).stdout.split()))  # next to its state
        if status["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, f"the job did not finish: {status}"
        time.sleep(1.0)
    run_s = time.monotonic() - started
    assert status["state"] == "SUCCEEDED", status["message"]
    assert peak_nodes == MAX_NODES  # scaled from 0 to 2 worker nodes
    waiting = [n for n in notes if n.startswith("waiting for nodes")]
    assert waiting, notes
    assert "needs 2 CPUs and 0 GPUs" in waiting[0] and "its autoscaler can add" in waiting[0], waiting
    assert listed and "waiting for nodes" in next(iter(listed))
    assert not status["message"].startswith("waiting")  # the note went once the workers started
    assert status["metrics"]["step"] == 6

    # Idle again: the autoscaler takes the nodes back (idle_timeout_minutes 0.1).
    wait_for(lambda: fake_cluster.worker_nodes() == [], 120, "the worker nodes to scale back down", poll_s=1.0)
    print(f"scale-up + run: {run_s:.0f} s")


def test_worker_node_lost_mid_run_is_replaced_by_the_autoscaler_and_the_job_finishes_from_its_checkpoint(
        fake_cluster, orch_as):
    orch = orch_as
    steps = 200
    job_id = orch.run("submit", str(REPO / "jobs/examples/mlp-digits.yaml"), "--address", fake_cluster.dashboard_url,
                      *_sets("name=preempt", "scaling.num_workers=2", "scaling.cpus_per_worker=1",
                             f"train.steps={steps}", "train.warmup_steps=0", "train.eval_every=0",
                             "train.report_every=5", "checkpoint.every_steps=10", "checkpoint.keep_latest=0",
                             "checkpoint.keep_best=0", "failure.max_restarts=1")).stdout.strip().splitlines()[-1]
    root = orch.storage / "jobs" / job_id

    # Lose a node right after a commit, while no newer checkpoint is being written (as test_multinode.py does).
    def quiet_after_commit() -> list[int]:
        seen = sorted(int(p.name.split("-")[1]) for p in (root / "checkpoints").glob("step-*"))
        committed = committed_steps(root)
        return committed if committed and seen == committed else []

    wait_for(quiet_after_commit, 300, "a committed checkpoint with no newer save in flight", poll_s=0.1)
    before = {n["node_id"] for n in fake_cluster.worker_nodes()}
    assert len(before) == MAX_NODES, before  # one worker on each 1-CPU node
    victim = max(before)
    started = time.monotonic()
    assert fake_cluster.kill_node(victim)
    last_committed = committed_steps(root)[-1]
    assert last_committed < steps, "the job finished before the node was lost; raise train.steps"

    # The autoscaler gives up on the silent node, terminates it and starts another for the restarted workers.
    def replaced() -> set[str]:
        alive = {n["node_id"] for n in fake_cluster.worker_nodes()}
        return alive if len(alive) == MAX_NODES and victim not in alive else set()

    after = wait_for(replaced, 240, "a replacement node", poll_s=1.0)
    replaced_s = time.monotonic() - started
    assert after - before, (before, after)  # a new node id, not the lost one back
    wait_for(lambda: len(attempts(root)) == 2, 240, "the second attempt (Ray Train restarting the workers)",
             poll_s=1.0)
    status = wait_for(lambda: (s := orch.status(job_id))["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") and s,
                      300, "the job's end", poll_s=2.0)
    assert status["state"] == "SUCCEEDED", status["message"]
    assert status["metrics"]["step"] == steps

    # It resumed from its newest checkpoint: the one committed before the loss, or one whose save was already
    # uploading then and committed after; never from scratch.
    tries = attempts(root)
    assert len(tries) == 2 and tries[0]["restored_step"] == 0, tries
    assert 0 < last_committed <= tries[1]["restored_step"] < steps, (tries, last_committed)
    assert tries[1]["restored_step"] in committed_steps(root)
    logged = [r["step"] for r in metrics_rows(root) if not r.get("final")]
    assert logged == sorted(set(logged)) and logged[-1] == steps  # the curve continues; no step shown twice

    wait_for(lambda: fake_cluster.worker_nodes() == [], 120, "the worker nodes to scale back down", poll_s=1.0)
    print(f"node lost -> replacement node alive: {replaced_s:.0f} s; job resumed from step {tries[1]['restored_step']}")
