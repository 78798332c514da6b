"""`orch cluster up|down|status`: the embedded local Ray cluster, its idle stop, stopping it on purpose."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rich.console import Console

from orchestrator.control.idle import describe_duration, parse_duration
from orchestrator.core.errors import OrchError

out = Console(highlight=False, soft_wrap=True)


def cluster_command(args: argparse.Namespace) -> int:
    from orchestrator.control.manager import JobManager

    # The embedded cluster belongs to ORCH_HOME; --address / ORCH_RAY_ADDRESS name other clusters, not this one.
    manager = JobManager(address=None)
    manager.address = None
    local = manager.local
    if args.action != "up" and args.idle_stop is not None:
        raise OrchError("--idle-stop: it sets the idle stop of `orch cluster up`; use it there "
                        "(orch cluster up --idle-stop 15m).")
    if args.action != "down" and args.cancel:
        raise OrchError("--cancel: it belongs to `orch cluster down` (cancel its jobs, then stop it).")
    if args.action == "up":
        idle = None if args.idle_stop is None else parse_duration(args.idle_stop, "--idle-stop")
        info = local.up(num_cpus=args.num_cpus, num_gpus=args.num_gpus, idle_stop_s=idle)
        _ensure_watcher(manager, info)
        out.print(f"Local Ray cluster up: dashboard {info.dashboard_url}, {info.num_cpus} CPUs, {info.num_gpus} GPUs; "
                  f"{_idle_text(manager, info)}")
    elif args.action == "down":
        from orchestrator.control.cluster_ops import stop_local_cluster

        running = local.info() is not None
        cancelled = stop_local_cluster(manager, cancel=args.cancel)
        for rec in cancelled:
            out.print(f"{rec.id}: CANCELLED (cluster stopped)")
        out.print("Local Ray cluster stopped." if running else "No local Ray cluster was running.")
    else:
        info = local.info()
        if info is not None:
            _ensure_watcher(manager, info)
        if args.json:
            print(json.dumps(_status_dict(manager, info), indent=2))
        elif info is None:
            out.print("No local Ray cluster is running (it starts on the first `orch submit`).")
        else:
            out.print(f"Local Ray cluster: dashboard {info.dashboard_url}, {info.num_cpus} CPUs; "
                      f"{_idle_text(manager, info)}")
    return 0


def _ensure_watcher(manager: Any, info: Any) -> None:
    """The background scheduler is what stops an idle cluster; make sure one watches this home."""
    if info.idle_stop_s > 0:
        from orchestrator.control.scheduler import ensure_scheduler

        ensure_scheduler(manager.home)


def _idle_view(manager: Any, info: Any) -> tuple[Any, Any]:
    from orchestrator.control.cluster_ops import idle_check

    return idle_check(manager, info)


def _idle_text(manager: Any, info: Any) -> str:
    if info.idle_stop_s <= 0:
        return "idle stop off (it runs until `orch cluster down`)"
    decision, use = _idle_view(manager, info)
    after = describe_duration(info.idle_stop_s)
    if decision.stop_at is None:
        active = len(use.records) + len(use.other_ray_jobs)
        return f"in use ({active} active job{'s' if active != 1 else ''}); stops after {after} idle"
    at = time.strftime("%H:%M:%S", time.localtime(decision.stop_at))
    left = describe_duration(max(0.0, decision.stop_at - time.time()))
    return f"idle; stops by itself at {at} (in {left}) unless a job starts (idle stop {after})"


def _status_dict(manager: Any, info: Any) -> dict[str, Any] | None:
    if info is None:
        return None
    data = dict(info.__dict__)
    if info.idle_stop_s > 0:
        decision, use = _idle_view(manager, info)
        data["idle_stop_at"] = decision.stop_at
        data["active"] = [rec.id for rec in use.records] + use.other_ray_jobs
    else:
        data["idle_stop_at"] = None
    return data
