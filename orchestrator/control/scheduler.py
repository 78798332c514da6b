"""The background scheduler: keeps ticking the job manager while jobs are queued or running.

One per ORCH_HOME (an exclusive file lock); it exits by itself when no job or campaign is left to watch,
or when none of their clusters has answered for GIVE_UP_S, so nothing lingers. Any `orch` command also
ticks, so a dead scheduler loses nothing: the next command
reconciles and, if jobs remain, starts a new scheduler.

With nothing left to watch it stays only while this home's embedded cluster runs with idle stop on: it
stops that cluster once idle for its `idle_stop_s` (see orchestrator/cluster_ops.py), then exits.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.control.cluster_address import ClusterUnavailable, check_reachable
from orchestrator.core.states import ACTIVE_STATES, JobState

POLL_S = 1.0
GIVE_UP_S = 600.0
IDLE_POLL_MAX_S = 10.0
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
        outage = False
        while True:
            watched = manager.db.list(states=[JobState.QUEUED, *ACTIVE_STATES])
            if not watched:
                wait_s = watch_idle(manager)
                if wait_s is None:
                    return 0
                time.sleep(wait_s)
                continue
            if any_cluster_answers({rec.ray_address for rec in watched if rec.ray_address}):
                last_answer = time.monotonic()
            elif time.monotonic() - last_answer > GIVE_UP_S:
                log.warning("no cluster has answered for %.0f s; exiting (the next orch command starts a new "
                            "scheduler)", GIVE_UP_S)
                return 0
            if any(manager.local.was_embedded(rec.ray_address) for rec in watched if rec.ray_address):
                manager.local.touch_activity()  # idle time counts from when the last of them ends
            try:
                restart_for_queued(manager, watched)
                manager.tick()
                outage = False
            except (ClusterUnavailable, OSError) as exc:  # OSError: requests' ConnectionError and friends
                # A cluster that is down is a state, not a bug: one line per outage, no traceback every second.
                if not outage:
                    log.warning("cluster unavailable (%s); jobs wait until it answers", str(exc).splitlines()[0])
                outage = True
            except Exception:  # keep watching: a passing cluster or storage error must not strand the queue
                log.exception("tick failed; retrying")
            time.sleep(POLL_S)


def restart_for_queued(manager: Any, watched: list[Any]) -> None:
    """Jobs queued for this home's embedded cluster while it was stopping (an idle stop racing a submit)
    start it again, as their submit would have."""
    if manager.address is None and manager.local.info() is None and any(
            rec.state == JobState.QUEUED and rec.kind == "job" and manager.local.was_embedded(rec.ray_address)
            for rec in watched):
        log.info("starting the local cluster again for queued jobs")
        manager.local.up()


def watch_idle(manager: Any) -> float | None:
    """Nothing to watch: stop this home's embedded cluster once it has been idle long enough.
    Returns seconds until the next look, or None when there is nothing left to do (exit)."""
    from orchestrator.control.cluster_ops import stop_if_idle

    info = manager.local.info()
    if info is None or info.idle_stop_s <= 0:
        return None
    try:
        if stop_if_idle(manager, info):
            log.info("stopped the local Ray cluster after %.0f s idle", info.idle_stop_s)
            return None
    except Exception:  # a failed look must not leave the cluster running forever; look again later
        log.exception("idle check failed; retrying")
    return min(IDLE_POLL_MAX_S, max(POLL_S, info.idle_stop_s / 10))


if __name__ == "__main__":
    sys.exit(main())
