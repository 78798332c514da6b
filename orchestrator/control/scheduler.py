"""The background scheduler: keeps ticking the job manager while jobs are queued or running.

One per ORCH_HOME (an exclusive file lock); it exits by itself when no job or campaign is left to watch,
or when none of their clusters has answered for GIVE_UP_S, so nothing lingers. Any `orch` command also
ticks, so a dead scheduler loses nothing: the next command
reconciles and, if jobs remain, starts a new scheduler.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.control.cluster_address import ClusterUnavailable, check_reachable
from orchestrator.core.states import ACTIVE_STATES, JobState

POLL_S = 1.0
GIVE_UP_S = 600.0
log = logging.getLogger("orch.scheduler")


def lock_path(home: Path) -> Path:
    return home / "scheduler.lock"


def scheduler_running(home: Path) -> bool:
    path = lock_path(home)
    if not path.exists():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def ensure_scheduler(home: Path) -> None:
    """Start the background scheduler unless one is already running for this ORCH_HOME."""
    if scheduler_running(home):
        return
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "scheduler.log", "ab") as out:
        subprocess.Popen([sys.executable, "-m", "orchestrator.control.scheduler"], stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "ORCH_HOME": str(home)})


def any_cluster_answers(urls: set[str]) -> bool:
    for url in urls:
        try:
            check_reachable(url)
            return True
        except ClusterUnavailable:
            continue
    return False


def main() -> int:
    from orchestrator.control.manager import JobManager

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    manager = JobManager()
    with open(lock_path(manager.home), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another scheduler has it
        last_answer = time.monotonic()
        while watched := manager.db.list(states=[JobState.QUEUED, *ACTIVE_STATES]):
            if any_cluster_answers({rec.ray_address for rec in watched if rec.ray_address}):
                last_answer = time.monotonic()
            elif time.monotonic() - last_answer > GIVE_UP_S:
                log.warning("no cluster has answered for %.0f s; exiting (the next orch command starts a new "
                            "scheduler)", GIVE_UP_S)
                return 0
            try:
                manager.tick()
            except Exception:  # keep watching: a passing cluster or storage error must not strand the queue
                log.exception("tick failed; retrying")
            time.sleep(POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
