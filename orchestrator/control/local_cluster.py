"""The embedded local Ray cluster: started on demand, found again by later commands, stopped cleanly.

`ray start --head --block` runs in its own process session, so it outlives the `orch` command that
started it and `orch cluster down` can stop exactly this cluster (its process group) without
touching any other Ray on the machine. Its addresses are kept in ORCH_HOME/cluster/cluster.json.

It also stops itself once idle (see cluster/idle.py and the background scheduler): `idle_stop_s` is kept in
the same file, and `activity` holds the last time anything ran on it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from orchestrator.control.cluster_address import ClusterUnavailable, fetch_nodes
from orchestrator.control.idle import default_idle_stop_s
from orchestrator.control.ray_housekeeping import QUIET_RAY_ENV, lower_observer_priority

START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class LocalClusterInfo:
    dashboard_url: str
    gcs_address: str
    pid: int
    num_cpus: int
    num_gpus: int
    log_file: str
    # Defaults keep state files written before idle stop existed readable.
    idle_stop_s: float = 0.0
    started_at: float = 0.0


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: all held open while picking, since a port just released can be handed out again
    (two Ray components given one port refuse to start)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _is_ray_head(info: LocalClusterInfo) -> bool:
    """Whether info.pid is the `ray start --head` this home started: its own process group leader, with the
    GCS port we gave it on its command line. cluster.json is only a file: a stale or edited one must never get
    another process killed (pids are reused)."""
    try:
        if Path("/proc").is_dir():
            argv = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
        else:  # macOS: no /proc
            argv = subprocess.run(["ps", "-o", "command=", "-p", str(info.pid)], capture_output=True,
                                  timeout=10).stdout.split()
        leader = os.getpgid(info.pid) == info.pid
    except (OSError, ProcessLookupError, subprocess.SubprocessError):
        return False
    port = info.gcs_address.rsplit(":", 1)[-1].encode()
    return (leader and b"ray.scripts.scripts" in argv and b"--head" in argv
            and any(a == b"--port" and b == port for a, b in zip(argv, argv[1:], strict=False)))


class LocalCluster:
    def __init__(self, home: Path):
        self.dir = home / "cluster"
        self.state_file = self.dir / "cluster.json"
        # Every dashboard address this home's embedded cluster has had: a job recorded against one of them ran
        # on this machine, and (new ports on each start) an address that no longer answers is gone for good.
        self.history_file = self.dir / "addresses"
        # Addresses stopped on purpose (`orch cluster down`, idle stop): their jobs were cancelled, never resubmit.
        self.stopped_file = self.dir / "stopped"
        self.activity_file = self.dir / "activity"

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Two `orch` commands starting at once must not start two clusters."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def info(self) -> LocalClusterInfo | None:
        """The running cluster, or None if there is none (a stale state file is ignored)."""
        try:
            info = LocalClusterInfo(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return info if _pid_alive(info.pid) and _is_ray_head(info) else None

    def up(self, num_cpus: int | None = None, num_gpus: int | None = None,
           idle_stop_s: float | None = None) -> LocalClusterInfo:
        """Start the cluster unless it runs; `idle_stop_s` (None: ORCH_IDLE_STOP_S or the default) also
        changes the idle stop of a running one, so `orch cluster up --idle-stop 0` keeps it."""
        with self._lock():
            running = self.info()
            if running is not None:
                if idle_stop_s is not None and idle_stop_s != running.idle_stop_s:
                    running = LocalClusterInfo(**{**asdict(running), "idle_stop_s": idle_stop_s})
                    self.state_file.write_text(json.dumps(asdict(running), indent=2))
                    self.touch_activity()  # a new idle time counts from now
                return running
            idle = default_idle_stop_s() if idle_stop_s is None else idle_stop_s
            return self._start(num_cpus or os.cpu_count() or 1, num_gpus, idle)

    def _start(self, num_cpus: int, num_gpus: int | None, idle_stop_s: float) -> LocalClusterInfo:
        gcs_port, dashboard_port, client_port, agent_port = _free_ports(4)
        log_file = self.dir / "ray-head.log"
        cmd = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
            "--ray-client-server-port", str(client_port), "--dashboard-agent-listen-port", str(agent_port),
            "--num-cpus", str(num_cpus), "--disable-usage-stats",
        ]
        if num_gpus is not None:  # otherwise Ray counts this machine's GPUs, so GPU jobs can run here
            cmd += ["--num-gpus", str(num_gpus)]
        env = {**QUIET_RAY_ENV, **os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # a user's own RAY_ setting wins
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        info = LocalClusterInfo(
            dashboard_url=f"http://127.0.0.1:{dashboard_port}", gcs_address=f"127.0.0.1:{gcs_port}",
            pid=proc.pid, num_cpus=num_cpus, num_gpus=num_gpus or 0, log_file=str(log_file),
            idle_stop_s=idle_stop_s, started_at=time.time(),
        )
        with open(self.history_file, "a") as history:
            history.write(info.dashboard_url + "\n")
        nodes = self._wait_ready(info, proc)
        lower_observer_priority(info.pid)
        if num_gpus is None:
            info = replace(info, num_gpus=int(sum(n.get("resources_total", {}).get("GPU", 0) for n in nodes)))
        self.state_file.write_text(json.dumps(asdict(info), indent=2))
        return info

    def was_embedded(self, dashboard_url: str) -> bool:
        """Whether this address belongs (or belonged) to this home's embedded cluster."""
        try:
            return dashboard_url in self.history_file.read_text().split()
        except OSError:
            return False

    def _wait_ready(self, info: LocalClusterInfo, proc: subprocess.Popen) -> list[dict]:
        """Ready means the dashboard answers and the head node has registered its resources (returned)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterUnavailable(f"The local Ray cluster exited while starting (code {proc.returncode}). "
                                         f"See {info.log_file}.")
            try:
                nodes = fetch_nodes(info.dashboard_url, timeout=2.0)
                if nodes:
                    return nodes
            except ClusterUnavailable:
                pass
            time.sleep(0.5)
        self._kill_group(info.pid)
        raise ClusterUnavailable(f"The local Ray cluster did not become ready in {START_TIMEOUT_S:.0f} s. "
                                 f"See {info.log_file}.")

    def stopped_on_purpose(self, dashboard_url: str | None) -> bool:
        """Whether that address was this home's cluster, stopped by `orch cluster down` or idle stop (not a
        crash), and no cluster runs there now."""
        try:
            stopped = dashboard_url in self.stopped_file.read_text().split()
        except OSError:
            return False
        current = self.info()
        return stopped and (current is None or current.dashboard_url != dashboard_url)

    def touch_activity(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.activity_file.write_text(f"{time.time():.3f}\n")

    def last_active(self, info: LocalClusterInfo) -> float:
        """When something last ran on it (or it started, or its idle setting changed), as a Unix time."""
        times = [info.started_at]
        for path in (self.activity_file, self.state_file):
            try:
                times.append(path.stat().st_mtime)
            except OSError:
                pass
        return max(times)

    def down(self, still_idle: Callable[[LocalClusterInfo], bool] | None = None) -> bool:
        """Stop the cluster. Returns False if none was running (or `still_idle`, asked under the lock so no
        command starts using the cluster meanwhile, says it is in use)."""
        with self._lock():
            info = self.info()
            if info is not None and still_idle is not None and not still_idle(info):
                return False
            self.state_file.unlink(missing_ok=True)
            if info is None:
                return False
            with open(self.stopped_file, "a") as stopped:
                stopped.write(info.dashboard_url + "\n")
            self._kill_group(info.pid)
            return True

    @staticmethod
    def _kill_group(pid: int) -> None:
        # SIGTERM makes Ray drain for up to 30 s; the cluster is ours alone, so give it 5 s, then SIGKILL.
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.2)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:  # reap it if we are its parent, so no zombie is left behind
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
