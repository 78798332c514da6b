"""The `orch` command. Thin: parse arguments, call the manager, print tables or JSON.

Every user-facing failure is an OrchError: printed as one paragraph, exit code non-zero, no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.control.cli.client import client
from orchestrator.control.cli.plain import plain, safe_str
from orchestrator.control.cli.tables import print_id_table
from orchestrator.core.errors import OrchError, SpecError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# ---- commands ----------------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    orch = client(args)
    job = orch.submit(args.spec, args.set or [], force=args.force, memory_per_worker_gb=args.memory_per_worker)
    if not args.wait:
        err.print(f"Submitted {job.id} ({job.status().state}). Follow it with: orch status {job.id}")
        print(job.id)
        return 0
    return _follow(orch, job.id)


def _follow(orch: Any, job_id: str) -> int:
    from orchestrator.control.progress import follow_job

    rec = follow_job(orch.manager, job_id, err)
    print(rec.id)
    return 0 if rec.state.value == "SUCCEEDED" else 1


def cmd_list(args: argparse.Namespace) -> int:
    statuses = client(args).jobs()
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
        return 0
    if not statuses:
        out.print("No jobs yet. Submit one with: orch submit jobs/examples/gpt-zero3.yaml")
        return 0
    rows = [[plain(s.id), s.kind, _state_cell(s.state, s.message), plain(s.metrics.get("step", "")),
             plain(_fmt(s.metrics.get("loss"))), str(s.attempts), plain(s.created_at)] for s in statuses]
    print_id_table(out, ["ID", "KIND", "STATE", "STEP", "LOSS", "ATTEMPTS", "CREATED"], "ID", rows,
                   droppable=["CREATED", "ATTEMPTS", "KIND"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    job = client(args).job(args.job)
    if job.record().kind == "campaign":
        from orchestrator.control.cli.campaigns import show_campaign

        return show_campaign(job, args.json)
    status = job.status()
    if args.json:
        print(json.dumps(status.as_dict(), indent=2))
        return 0
    table = Table(show_header=False, box=None)
    for key, value in status.as_dict().items():
        if key == "metrics":
            value = "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(value.items()) if k != "time")
        table.add_row(f"[bold]{key}[/]", _state_text(str(value)) if key == "state" else plain(value))
    out.print(table)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from orchestrator.control.cli.logs import show_logs

    return show_logs(client(args), args)


def cmd_cancel(args: argparse.Namespace) -> int:
    status = client(args).job(args.job).cancel()
    out.print(f"{status.id}: {_state_text(status.state)}")
    return 0 if status.state == "CANCELLED" else 1


def cmd_resume(args: argparse.Namespace) -> int:
    orch = client(args)
    job = orch.job(args.job)
    if job.record().kind == "campaign":
        from orchestrator.control.cli.campaigns import resume_campaign_cmd

        if args.set:
            raise SpecError(f"--set applies to resuming a job; {args.job} is a campaign, whose trials resume as "
                            "they were. Resume it without --set.")

        return resume_campaign_cmd(orch, job, args)
    sets = args.set or []
    if sets:
        from orchestrator.core.resume_spec import resume_spec

        # Checked here first, so the user sees what else follows from the change (kept global batch, resharding).
        for note in resume_spec(job.record().spec, sets, f"job {args.job} spec")[1]:
            err.print(f"Resuming with {note}.")
    status = job.resume(sets)
    if not args.wait:
        err.print(f"Resumed {status.id} ({status.state}); it continues from its newest verified checkpoint.")
        print(status.id)
        return 0
    return _follow(orch, status.id)


def cmd_cluster(args: argparse.Namespace) -> int:
    from orchestrator.control.cli.cluster import cluster_command

    return cluster_command(args)


# ---- formatting ---------------------------------------------------------------------------------------
STATE_STYLES = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow", "RUNNING": "cyan",
                "STARTING": "blue", "QUEUED": "white"}


def _state_text(state: str) -> str:
    style = STATE_STYLES.get(state)
    return f"[{style}]{state}[/]" if style else state


def _state_cell(state: str, message: str) -> str:
    """A job's state, with what it waits for (nodes from the autoscaler, Ray to accept it) next to it."""
    return _state_text(state) + (f" ({plain(message)})" if (message or "").startswith("waiting for") else "")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# ---- parser -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orch", description="Submit and watch DeepSpeed training jobs on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        p.add_argument("--address", help="Ray dashboard address of an existing cluster (default: ORCH_RAY_ADDRESS, "
                       "else the embedded local cluster)")
        p.add_argument("--verbose", action="store_true", help="also show what other libraries print (DeepSpeed, "
                       "Ray, progress bars), on stderr")
        return p

    p = add("submit", cmd_submit, "Submit a job spec (YAML).")
    p.add_argument("spec")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field (dotted path)")
    p.add_argument("--wait", action="store_true", help="show live progress; exit 0 only if the job SUCCEEDED")
    p.add_argument("--force", action="store_true", help="submit even if the memory estimate says a worker cannot fit")
    p.add_argument("--memory-per-worker", type=float, metavar="GiB",
                   help="memory budget of one worker (default: ORCH_WORKER_MEMORY_GB, else node memory per CPU)")
    p = add("list", cmd_list, "List jobs and campaigns.")
    p.add_argument("--json", action="store_true")
    p = add("status", cmd_status, "Show one job or campaign.")
    p.add_argument("job")
    p.add_argument("--json", action="store_true")
    p = add("logs", cmd_logs, "Print a job's driver and worker logs.")
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--rank", type=int, metavar="N", help="only the lines of training worker rank N")
    p.add_argument("--since", metavar="STEP|TIME", help="from a step (120), a UTC time (2026-01-02T10:00:00) or "
                   "a duration ago (10m) on")
    p.add_argument("--errors", action="store_true", help="the failure reason and its traceback first, then "
                   "other error lines")
    p = add("cancel", cmd_cancel, "Cancel a queued or running job.")
    p.add_argument("job")
    p = add("resume", cmd_resume, "Resume a failed or cancelled job from its newest verified checkpoint.")
    p.add_argument("job")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="change how it is spread over workers, "
                   "e.g. scaling.num_workers=4 (the checkpoint is resharded for them)")
    p.add_argument("--wait", action="store_true")
    p = add("cluster", cmd_cluster, "Manage the embedded local Ray cluster.")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--idle-stop", metavar="DURATION", help="up: stop by itself after this long with nothing "
                   "queued or running (900, 15m, 1h; 0 = never; default ORCH_IDLE_STOP_S, else 15m)")
    p.add_argument("--cancel", action="store_true", help="down: cancel its queued and running jobs first")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs to offer jobs (default: the GPUs Ray finds)")
    p.add_argument("--json", action="store_true")
    from orchestrator.control.cli.campaigns import register as register_campaigns
    from orchestrator.control.cli.checkpoints import register
    from orchestrator.control.cli.data import register as register_data
    from orchestrator.control.cli.generate import register as register_generate
    from orchestrator.control.cli.insights import register as register_insights
    from orchestrator.control.cli.spec_doc import register as register_spec
    from orchestrator.control.cli.sync import register as register_sync
    from orchestrator.control.cli.ui import register as register_ui

    register(add)
    register_generate(add)
    register_campaigns(add)
    register_sync(add)
    register_insights(add)
    register_spec(add)
    register_ui(add)
    register_data(add)
    return parser


class _TerminalLog(logging.Handler):
    """Warnings (storage retries...) as short notes on stderr, so the final error stays the one paragraph."""

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.name == "orchestrator.storage.retry" and isinstance(args, tuple) and len(args) == 5:
            # (what, delay, attempt, attempts, error): the error itself is printed once, if we give up.
            text = f"{args[0]} failed; retrying in {args[1]:.1f} s (attempt {args[2]} of {args[3]})"
        else:
            text = record.getMessage()
        err.print(f"[dim]{escape(text)}[/]")


def _show_warnings() -> None:
    logger = logging.getLogger("orchestrator")
    if not any(isinstance(h, _TerminalLog) for h in logger.handlers):
        logger.addHandler(_TerminalLog(logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from orchestrator.core.noise import set_verbose

    set_verbose(args.verbose)
    _show_warnings()
    try:
        return args.func(args)
    except OrchError as exc:
        err.print("[red]error:[/]", escape(safe_str(exc)))
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
