"""`orch sync`: rebuild the job index from storage (after jobs.db was lost, or on a new machine)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from orchestrator.control.cli.plain import plain, safe_str
from orchestrator.control.cli.tables import print_id_table

out = Console(highlight=False, soft_wrap=True)


def cmd_sync(args: argparse.Namespace) -> int:
    from orchestrator.control.manager import JobManager
    from orchestrator.control.scheduler import ensure_scheduler
    from orchestrator.control.settings import default_storage_uri
    from orchestrator.control.sync import sync_index
    from orchestrator.core.states import ACTIVE_STATES

    manager = JobManager(address=args.address)
    uris = [default_storage_uri(), *(args.storage or [])]
    result = sync_index(manager, uris)
    if any(rec.state in ACTIVE_STATES for rec in result.added):
        ensure_scheduler(manager.home)  # follow the running jobs we found, as if they had never been lost
    if args.json:
        print(json.dumps({"added": [rec.as_dict() for rec in result.added], "already_indexed": result.already_indexed,
                          "skipped": result.skipped}, indent=2))
        return 0
    if result.added:
        rows = [[plain(rec.id), rec.state.value, plain(rec.metrics.get("step", "")),
                 _loss_text(rec.metrics.get("loss")), plain(rec.message)] for rec in result.added]
        print_id_table(out, ["ID", "STATE", "STEP", "LOSS", "MESSAGE"], "ID", rows)
    for job_id, why in result.skipped.items():
        out.print(f"[yellow]skipped[/] {escape(safe_str(job_id))}: {escape(safe_str(why))}")
    out.print(f"Indexed {len(result.added)} job(s) from {len(dict.fromkeys(uris))} storage location(s); "
              f"{len(result.already_indexed)} were already indexed, {len(result.skipped)} skipped.")
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("sync", cmd_sync, "Rebuild the job index from storage (e.g. after jobs.db was deleted).")
    p.add_argument("--storage", action="append", metavar="URI",
                   help="also scan this storage location (s3://bucket/prefix or a path); repeatable")
    p.add_argument("--json", action="store_true")


def _loss_text(loss: object) -> str:
    return f"{loss:.4g}" if isinstance(loss, float) else ""
