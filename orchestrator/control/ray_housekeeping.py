"""Keeping the embedded Ray cluster's own housekeeping out of training's way on a small machine.

A local cluster shares its cores with the jobs it runs. Measured on 2 cores with 2 GPT workers, Ray's ~20 other
processes (GCS, raylet, dashboard and its 9 module processes, agents, the job supervisor, Ray Train's controller
and helper actors) took ~8% of the CPU, and a wake-up of one of them can preempt a worker, which stalls the other
at the next all-reduce. Two remedies, for the cluster `orch` starts itself (a cluster someone else runs is theirs
to tune):

- Ray's periodic bookkeeping that nothing in orch reads runs less often (`QUIET_RAY_ENV`).
- The observability daemons (dashboard, agents, monitors) run at a lower priority than training
  (`lower_observer_priority`): they still get their CPU, but training is preferred when both want a core.
  GCS and the raylet keep normal priority: they carry the control plane, and workers inherit the raylet's.
Measured effect on that machine: about +1% training throughput (BENCHMARKS.md, "Orchestration overhead").
"""

from __future__ import annotations

import os
from pathlib import Path

# Ray settings (RAY_<name> reaches every process of the cluster: all inherit the head's environment).
QUIET_RAY_ENV = {
    # Per-handler timing stats of every event loop, only written to debug dumps.
    "RAY_event_stats": "0",
    # Prometheus metrics export (every 10 s by default) and event-loop lag sampling: orch reads neither.
    "RAY_metrics_report_interval_ms": "60000",
    "RAY_io_context_event_loop_lag_collection_interval_ms": "60000",
    # The raylet's scans for idle workers to kill (every 0.2 s) and for a full disk (every 0.1 s).
    "RAY_kill_idle_workers_interval_ms": "2000",
    "RAY_local_fs_monitor_interval_ms": "1000",
}
# Higher is lower priority; 10 still gets a waiting daemon onto a core within milliseconds.
OBSERVER_NICENESS = 10
# Left at normal priority, with the group's leader (`ray start`, which only waits): the control plane, GCS and the
# raylet, whose niceness every worker it starts inherits.
CONTROL_PLANE = ("gcs_server", "raylet")


def lower_observer_priority(group_pid: int) -> int:
    """Renice the head's observability processes: those in `group_pid`'s process group but its leader and the
    control plane. Never raises a priority. Returns how many were lowered. Linux only (reads /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return 0
    lowered = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == group_pid:
            continue
        pid = int(entry.name)
        try:
            if os.getpgid(pid) != group_pid:
                continue
            program = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if Path(program).name in CONTROL_PLANE or os.getpriority(os.PRIO_PROCESS, pid) >= OBSERVER_NICENESS:
                continue
            os.setpriority(os.PRIO_PROCESS, pid, OBSERVER_NICENESS)
            lowered += 1
        except (OSError, ProcessLookupError):  # gone meanwhile, or not ours to change
            continue
    return lowered
