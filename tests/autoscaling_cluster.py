"""Ray's fake autoscaling cluster (the provider behind `ray.cluster_utils.AutoscalingCluster`), started safely.

`AutoscalingCluster.start()` runs `ray stop --force`, which stops every Ray process on the machine, so it is never
called. The head is started the way it does it (`ray start --head --autoscaling-config=...` with RAY_FAKE_CLUSTER=1
and a 1 s autoscaler loop), but on free ports, its own RAY_TMPDIR and its own process session. The autoscaler
(Ray's monitor, a child of the head) starts each worker node as raylet processes of its own, so stopping the head's
process tree stops the worker nodes too, and nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.control.cluster_address import ClusterUnavailable, auth_headers, fetch_cluster_status, fetch_nodes
from tests.process_tree import kill_process_tree, process_tree
from tests.s3server import free_port

HEAD_START_TIMEOUT_S = 180.0
# Test-only: notice a dead node in a few seconds instead of Ray's default ~30 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
    "RAY_raylet_start_wait_time_s": "120",
}
OBJECT_STORE_BYTES = 80 * 2**20  # the smallest Ray accepts is 75 MiB; nodes here move no big objects
REPO = Path(__file__).resolve().parents[1]


def fake_config(gcs_address: str, worker_types: dict[str, dict[str, Any]], max_workers: int,
                idle_timeout_minutes: float) -> dict[str, Any]:
    """A cluster-launcher config for the fake multi-node provider (what Ray's example.yaml holds, plus ours)."""
    return {
        "cluster_name": "orch-fake",
        "max_workers": max_workers,
        # Ray's fake_multinode provider, with nodes the autoscaler replaces when they die (tests/fake_provider.py).
        "provider": {"type": "external", "module": "tests.fake_provider.ReplaceableFakeProvider",
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            **worker_types,
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 2.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {}, "auth": {"ssh_user": "ubuntu"}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


class FakeAutoscalingCluster:
    """A 0-CPU head whose autoscaler adds `worker_types` nodes (each a real raylet on this machine) on demand."""

    def __init__(self, root: Path, worker_types: dict[str, dict[str, Any]], max_workers: int,
                 idle_timeout_minutes: float, extra_env: dict[str, str] | None = None):
        self.root = root
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.config_path = root / "autoscaler.json"
        self.config_path.write_text(json.dumps(fake_config(
            f"127.0.0.1:{self.gcs_port}", worker_types, max_workers, idle_timeout_minutes), indent=2))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORCH_", "RAY_"))},
            **FAST_HEALTH_CHECKS, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(root),
            "PYTHONUNBUFFERED": "1", **(extra_env or {}),
            **({"RAY_AUTH_MODE": "token"} if auth_headers() else {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "head.log"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
               f"--autoscaling-config={self.config_path}", "--num-cpus", "0", "--num-gpus", "0",
               "--object-store-memory", str(OBJECT_STORE_BYTES), "--node-ip-address", "127.0.0.1",
               "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats"]
        # As AutoscalingCluster does: the fake provider and a 1 s autoscaler loop. Test-only: the autoscaler gives up
        # on a node it has had no report from for 10 s (Ray's default 30 s), terminates it in the provider and, if
        # its resources are still wanted, launches a replacement. Ray's monitor imports the provider from here.
        env = {**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")]))}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env)
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while not (self._head_alive() and self._autoscaler_reports()):
            if self.proc.poll() is not None:
                raise AssertionError(f"ray start --head exited:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake autoscaling head did not start in {HEAD_START_TIMEOUT_S:.0f} s")
            time.sleep(0.5)

    def _head_alive(self) -> bool:
        try:
            return any("node:__internal_head__" in n.get("resources_total", {})
                       for n in fetch_nodes(self.dashboard_url, timeout=2.0))
        except ClusterUnavailable:
            return False

    def _autoscaler_reports(self) -> bool:
        """Ray's monitor publishes the autoscaler's report a few seconds after the head is up."""
        try:
            return bool(fetch_cluster_status(self.dashboard_url, timeout=2.0).get("autoscalerReport"))
        except ClusterUnavailable:
            return False

    def worker_nodes(self) -> list[dict[str, Any]]:
        """Alive nodes other than the head."""
        return [n for n in fetch_nodes(self.dashboard_url, timeout=5.0)
                if "node:__internal_head__" not in n.get("resources_total", {})]

    def kill_node(self, node_id: str) -> set[int]:
        """SIGKILL one worker node: its raylet and everything the raylet started (agents, training workers), what a
        preempted machine looks like to Ray. The raylet is found by its node id among this head's descendants only
        (another fake cluster on the machine numbers its nodes the same way). Returns the pids killed."""
        assert self.proc is not None
        flag = f"--node_id={node_id}".encode()
        raylets = []
        for pid in process_tree(self.proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # exited meanwhile
            if argv[0].endswith(b"/raylet") and flag in argv:
                raylets.append(pid)
        assert len(raylets) == 1, f"raylets of node {node_id}: {raylets}"
        killed = process_tree(raylets[0])
        kill_process_tree(raylets[0])  # the raylet is the monitor's child: Ray's provider reaps it
        return killed

    def stop(self) -> None:
        """SIGKILL the head's process tree: its session plus descendants that left it (the autoscaler's nodes)."""
        if self.proc is None:
            return
        kill_process_tree(self.proc.pid)
        self.proc.wait(timeout=30)
        self.proc = None
