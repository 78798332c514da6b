"""The embedded cluster `orch cluster up` starts keeps Ray's housekeeping out of training's way: its observability
daemons run below normal priority, its control plane at normal priority, and Ray's unread bookkeeping is slowed
for every process of the cluster (see orchestrator/control/ray_housekeeping.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestrator.control.ray_housekeeping import OBSERVER_NICENESS, QUIET_RAY_ENV
from tests.e2e.conftest import Orch
from tests.process_tree import process_tree

pytestmark = pytest.mark.e2e


def head_processes(leader: int) -> dict[int, str]:
    """{pid: program} of the head's processes: the executable's or script's name, or the title Ray gives it."""
    found = {}
    for pid in process_tree(leader):  # the head is its own session's leader (`start_new_session`)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue  # exited while we looked
        script = next((arg for arg in argv[1:] if arg.endswith(".py")), argv[0])
        found[pid] = Path(script.split(" ")[0]).name
    return found


@pytest.mark.e2e_timeout(240)
def test_cluster_up_lowers_observers_and_quiets_bookkeeping(own_cluster_orch: Orch) -> None:
    own_cluster_orch.run("cluster", "up", "--idle-stop", "0", timeout=180)
    leader = json.loads(own_cluster_orch.run("cluster", "status", "--json").stdout)["pid"]
    procs = head_processes(leader)

    def niceness(program: str) -> list[int]:
        return [os.getpriority(os.PRIO_PROCESS, pid) for pid, name in procs.items() if name == program]

    assert niceness("gcs_server") == niceness("raylet") == [0]
    assert niceness("dashboard.py") == niceness("ray::DashboardAgent") == [OBSERVER_NICENESS]
    assert niceness("log_monitor.py") == niceness("monitor.py") == [OBSERVER_NICENESS]
    raylet = next(pid for pid, name in procs.items() if name == "raylet")
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{raylet}/environ").read_text().split("\0") if "=" in item)
    assert {name: environ.get(name) for name in QUIET_RAY_ENV} == QUIET_RAY_ENV
