"""Beyond one machine: `orch submit --address` to a separately started Ray cluster of several nodes.

The nodes are separate raylets on this machine (`ray start --head`, then `ray start --address=<gcs>`), each
in its own process session with its own temp dir and 1 CPU, so a 2-worker STRICT_SPREAD job has to put one
worker on each node, exactly as on two machines. Checkpoints go to the shared S3 store (local paths differ
per node in the real world). Killing a node kills its whole process tree (raylet, agents, the training
worker): what a lost machine looks like to Ray.

Nothing here uses `ray stop` (it would stop every Ray on the machine): each node is stopped by its own pids.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.control.cluster_address import ClusterUnavailable, auth_headers, fetch_nodes
from tests.e2e.conftest import EXTENSIONS_CACHE, REPO, Orch, wait_for
from tests.process_tree import kill_process_tree, proc_table
from tests.s3server import S3Server, free_port

pytestmark = pytest.mark.e2e

NODE_START_TIMEOUT_S = 150.0
NODE_SETTINGS = {
    # Test-only: notice a dead node in ~3 s instead of Ray's default ~30 s (GCS health checks of each raylet).
    "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
    # Ray gives a raylet 60 s to register; a machine shared with other test runs can take longer.
    "RAY_raylet_start_wait_time_s": "120",
}


# ---- processes ----------------------------------------------------------------------------------------------
@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen
    log: Path
    node_id: str = ""
    killed: bool = False

    def exited(self) -> bool:
        """Whether `ray start` exited, without reaping it: its pid (the node's session id) stays reserved until
        kill() has found the session's processes by it."""
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def kill(self) -> None:
        """SIGKILL the node's whole process tree: a machine that is gone, not a graceful drain."""
        if self.killed:
            return
        kill_process_tree(self.proc.pid)
        self.proc.wait(timeout=30)  # reap `ray start` only now; its orphans are reaped by init
        self.killed = True


class NodeSet:
    """A Ray cluster of several raylets on this machine, started and stopped by this test module only."""

    def __init__(self, root: Path):
        self.root = root
        self.nodes: list[RayNode] = []
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORCH_", "RAY_"))},
            **NODE_SETTINGS, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(root),
            "TORCH_EXTENSIONS_DIR": str(EXTENSIONS_CACHE), "PYTHONUNBUFFERED": "1",
            # Where a token exists, a Ray head turns token auth on by itself, but joining nodes and Ray's CLI
            # send the token only when told to, as on a real cluster (cluster/ configs set it on every node).
            **({"RAY_AUTH_MODE": "token"} if auth_headers() else {}),
        }

    def _start(self, name: str, args: list[str], marker: str) -> RayNode:
        log = self.root / f"{name}.log"
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus", "1", "--num-gpus", "0",
               "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats",
               # One temp dir per node, as on separate machines (Ray allows it per node).
               "--temp-dir", str(self.root / name), *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=self.env)
        node = RayNode(name, proc, log)
        self.nodes.append(node)
        node.node_id = wait_for(lambda: self._registered(node, marker), NODE_START_TIMEOUT_S, f"Ray node {name}")
        return node

    def _registered(self, node: RayNode, marker: str) -> str:
        if node.exited():
            raise AssertionError(f"ray start for {node.name} exited:\n{node.log.read_text()}")
        try:
            alive = fetch_nodes(self.dashboard_url, timeout=2.0)
        except ClusterUnavailable:
            return ""
        return next((n["node_id"] for n in alive if marker in n.get("resources_total", {})), "")

    def start_head(self) -> RayNode:
        return self._start("head", [
            "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(free_port())], marker="node:__internal_head__")

    def add_node(self, name: str) -> RayNode:
        """A worker node with a custom resource named after it, so tests can tell the nodes apart."""
        return self._start(name, ["--address", f"127.0.0.1:{self.gcs_port}", "--node-ip-address", "127.0.0.1",
                                  "--resources", json.dumps({name: 1})], marker=name)

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, the head (GCS) last
            node.kill()
        self.nodes.clear()


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[NodeSet]:
    """A Ray head with 1 CPU, started separately from `orch cluster up`; tests add and kill worker nodes."""
    EXTENSIONS_CACHE.mkdir(parents=True, exist_ok=True)
    # Ray's socket paths must stay short, so its temp dirs are not under pytest's long tmp path.
    nodes = NodeSet(Path(tempfile.mkdtemp(prefix="orch-mn-", dir="/tmp")))
    try:
        nodes.start_head()
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(nodes.root, ignore_errors=True)


def _kill_schedulers(home: Path) -> None:
    """The background `orch` scheduler of this ORCH_HOME exits when its jobs end; after a failure it may not."""
    for pid in proc_table():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"orchestrator.control.scheduler" in cmdline and f"ORCH_HOME={home}".encode() in environ:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def remote_orch(ray_nodes: NodeSet, tmp_path: Path) -> Iterator[Orch]:
    """The `orch` CLI with its own ORCH_HOME and no default cluster: every submit names --address."""
    home = tmp_path / "orch-home"
    env = {k: v for k, v in ray_nodes.env.items() if k not in NODE_SETTINGS}
    orch = Orch(home=home, env={**env, "ORCH_HOME": str(home)})
    try:
        yield orch
    finally:
        _kill_schedulers(home)


def _actor_nodes(dashboard_url: str) -> list[str]:
    """Node ids of the live Ray Train worker actors, from the Ray State API."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    client = StateApiClient(address=dashboard_url, headers=auth_headers() or None)  # the cluster's token, if any
    actors = client.list(StateResource.ACTORS, options=ListApiOptions(filters=[
        ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]), raise_on_missing_output=False)
    return sorted(a.node_id for a in actors)


def _sets(*overrides: str) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


# ---- tests ------------------------------------------------------------------------------------------------------
def test_orch_submit_to_existing_head_shows_in_ray_job_list(ray_nodes, remote_orch):
    proc = remote_orch.run("submit", str(REPO / "jobs/examples/mlp-digits.yaml"), "--address", ray_nodes.dashboard_url,
                           "--wait", *_sets("scaling.num_workers=1", "train.steps=10", "train.warmup_steps=0",
                                            "train.eval_every=0", "checkpoint.every_steps=0"))
    job_id = proc.stdout.strip().splitlines()[-1]
    status = remote_orch.status(job_id)
    assert status["state"] == "SUCCEEDED", status["message"]
    assert status["ray_address"] == ray_nodes.dashboard_url  # reconciled against that cluster, not an embedded one
    assert not (remote_orch.home / "cluster" / "cluster.json").exists()  # no embedded cluster was started

    listed = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "job", "list", "--address",
                             ray_nodes.dashboard_url], capture_output=True, text=True, timeout=120,
                            env=remote_orch.env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"submission_id='{re.escape(job_id)}'.*?status=<JobStatus\.SUCCEEDED", listed.stdout, re.S), \
        listed.stdout


class JobObjects:
    """A job's files in the S3 bucket, read with a plain S3 client."""

    def __init__(self, s3: Any, bucket: str, prefix: str):
        self.s3, self.bucket, self.prefix = s3, bucket, prefix

    def keys(self, under: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + under)
        return [o["Key"].removeprefix(self.prefix) for page in pages for o in page.get("Contents", [])]

    def json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read())

    def checkpoint_steps(self) -> tuple[list[int], list[int]]:
        """(steps with any file, committed steps: MANIFEST.json written)."""
        seen: set[int] = set()
        committed: set[int] = set()
        for key in self.keys("checkpoints/"):
            match = re.match(r"checkpoints/step-(\d+)/(.*)", key)
            if match:
                seen.add(int(match.group(1)))
                if match.group(2) == "MANIFEST.json":
                    committed.add(int(match.group(1)))
        return sorted(seen), sorted(committed)

    def attempts(self) -> list[dict[str, Any]]:
        return [self.json(k) for k in sorted(self.keys("attempts/"))]


def test_worker_node_lost_mid_run_job_recovers_on_replacement_node(ray_nodes, remote_orch, s3_server: S3Server):
    remote_orch.env.update(s3_server.env)  # the CLI reads the job's metrics from S3 too
    bucket = f"multinode-{uuid.uuid4().hex[:12]}"
    s3_server.make_bucket(bucket)
    node_b = ray_nodes.add_node("node_b")
    steps = 60
    proc = remote_orch.run(
        "submit", str(REPO / "jobs/examples/gpt-zero3.yaml"), "--address", ray_nodes.dashboard_url,
        *_sets("name=gpt-multinode", f"storage=s3://{bucket}/runs", "scaling.placement_strategy=STRICT_SPREAD",
               f"train.steps={steps}", "train.eval_every=0", "train.report_every=5", "checkpoint.every_steps=10",
               "checkpoint.keep_latest=0", "failure.max_restarts=1"))
    job_id = proc.stdout.strip().splitlines()[-1]
    job = JobObjects(s3_server.client(), bucket, f"runs/jobs/{job_id}/")
    head = ray_nodes.nodes[0]

    # STRICT_SPREAD over two 1-CPU nodes: one worker on each.
    placed = wait_for(lambda: len(found := _actor_nodes(ray_nodes.dashboard_url)) == 2 and found, 180,
                      "two Ray Train workers")
    assert placed == sorted([head.node_id, node_b.node_id])

    # Kill node_b right after a commit, while no newer checkpoint is being written, so the step to resume
    # from is known exactly (a save in flight could otherwise still commit after the kill).
    def quiet_after_commit() -> list[int]:
        seen, committed = job.checkpoint_steps()
        return committed if committed and seen == committed else []

    wait_for(quiet_after_commit, 180, "a committed checkpoint with no newer save in flight", poll_s=0.1)
    node_b.kill()
    seen, committed = job.checkpoint_steps()
    last_committed = committed[-1]
    assert last_committed < steps, "the job finished before the node was killed; raise train.steps"

    node_c = ray_nodes.add_node("node_c")  # the replacement machine joins the cluster
    wait_for(lambda: len(job.attempts()) == 2, 240, "the second attempt (Ray Train restarting the workers)")
    placed = wait_for(lambda: len(found := _actor_nodes(ray_nodes.dashboard_url)) == 2 and found, 60,
                      "two Ray Train workers after the restart")
    assert placed == sorted([head.node_id, node_c.node_id])

    wait_for(lambda: "result.json" in job.keys(), 240, "result.json")
    status = wait_for(lambda: (s := remote_orch.status(job_id))["state"] in ("SUCCEEDED", "FAILED") and s, 60,
                      "the job's final state", poll_s=2)
    assert status["state"] == "SUCCEEDED", status["message"]
    tries = job.attempts()
    assert [t["restored_step"] for t in tries] == [0, last_committed], (tries, seen, committed)
    result = job.json("result.json")
    assert result["status"] == "SUCCEEDED" and result["last_step"] == steps and result["attempts"] == 2
    assert result["checkpoints"][-1] == steps
    rows = [json.loads(line) for line in
            job.s3.get_object(Bucket=bucket, Key=job.prefix + "metrics.jsonl")["Body"].read().decode().splitlines()]
    logged = [r["step"] for r in rows if not r.get("final")]
    assert logged == sorted(set(logged)) and logged[-1] == steps  # the curve continues; no step shown twice
