"""Lowering the embedded cluster's observability daemons below training: exactly the head's process group, never
its leader or control plane (GCS, the raylet whose niceness workers inherit), never raising a priority."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.control.ray_housekeeping import OBSERVER_NICENESS, lower_observer_priority

PROGRAMS = ["raylet", "gcs_server", "dashboard", "agent", "already-nice"]
# A stand-in head: a group leader with children run as programs named like Ray's (links to this Python in its
# bin_dir). Each child prints its pid; the leader prints them all once every child has.
HEAD = textwrap.dedent("""
    import os, subprocess, sys
    bin_dir = sys.argv[1]
    sleep = "import os, sys, time; sys.stdout.write(str(os.getpid()) + chr(10)); sys.stdout.flush(); time.sleep(60)"
    children = {}
    for name in sorted(os.listdir(bin_dir)):
        pre = (lambda: os.nice(15)) if name == "already-nice" else None
        proc = subprocess.Popen([os.path.join(bin_dir, name), "-c", sleep, "--raylet_socket_name=x"],
                                stdout=subprocess.PIPE, text=True, preexec_fn=pre)
        children[name] = proc.stdout.readline().strip()
    print(" ".join(f"{name}={pid}" for name, pid in children.items()), flush=True)
    sys.stdin.read()
""")


@pytest.fixture()
def head(tmp_path: Path):
    for name in PROGRAMS:
        (tmp_path / name).symlink_to(sys.executable)
    proc = subprocess.Popen([sys.executable, "-c", HEAD, str(tmp_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    pids = dict(item.split("=") for item in proc.stdout.readline().split())
    yield proc, {name: int(pid) for name, pid in pids.items()}
    os.killpg(proc.pid, 9)
    proc.wait()


def nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def test_only_the_observers_of_the_group_are_lowered(head):
    leader, pids = head
    outsider = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert lower_observer_priority(leader.pid) == 2
        assert nice(pids["dashboard"]) == nice(pids["agent"]) == OBSERVER_NICENESS
        # An argument naming the raylet does not make a process the raylet.
        assert nice(pids["raylet"]) == nice(pids["gcs_server"]) == nice(leader.pid) == 0
        assert nice(pids["already-nice"]) == 15  # never raised
        assert nice(outsider.pid) == 0
    finally:
        outsider.kill()
        outsider.wait()
