"""`orch logs JOB [--rank N] [--follow] [--since STEP|TIME] [--errors]`: a job's Ray logs, readable.

Filtering lives in orchestrator/logview.py; this module fetches the log and writes what it keeps.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from orchestrator.control.index import JobRecord
from orchestrator.core.errors import OrchError

err = Console(stderr=True, highlight=False, soft_wrap=True)


def show_logs(manager: Any, args: argparse.Namespace) -> int:
    from orchestrator.control.logview import LogFilter, error_report, parse_since, split_lines
    from orchestrator.control.manager import ray_submission_id

    rec = manager.db.get(args.job)
    if args.errors and args.follow:
        raise OrchError("--errors: it reads the whole log of a finished job and does not combine with --follow; "
                        "drop one of them.")
    if args.rank is not None and args.rank < 0:
        raise OrchError(f"--rank: {args.rank} is not a worker rank; ranks count from 0.")
    since = parse_since(args.since) if args.since else None
    if rec.ray_address is None or rec.submissions == 0:  # never ask "any Ray on this machine"
        raise OrchError(f"Job {rec.id} has no Ray logs: it has not been handed to a Ray cluster we know "
                        f"({rec.state.value.lower()}). Its metrics and result are in {rec.storage_uri}.")
    ray = manager.ray_for(rec.ray_address)
    view = LogFilter(rank=args.rank, since=since)
    view.ranks.update(_ranks_from_storage(rec))
    tty = sys.stdout.isatty()
    try:
        if args.follow:
            from orchestrator.control.progress import stream_logs_with_status

            lines = view.run(split_lines(ray.follow_logs(ray_submission_id(rec))))
            stream_logs_with_status(manager, rec.id, _with_newlines(lines, tty), err)
        else:
            raw = ray.logs(ray_submission_id(rec)).splitlines()
            for line in raw:  # a pid's rank is known from the worker group's start, even for earlier lines
                view.learn(line)
            if args.errors:
                reason = rec.message if rec.state.value == "FAILED" else ""
                shown: Iterator[str] = iter(error_report(raw, reason, view.ranks))
            else:
                shown = view.run(raw)
            for text in _with_newlines(shown, tty):
                sys.stdout.write(text)
    except (RuntimeError, ConnectionError):  # Ray's "job does not exist" / HTTP errors / a stopped cluster
        raise OrchError(f"The Ray cluster at {rec.ray_address} has no logs for job {rec.id} (it was probably "
                        f"stopped or restarted since the job ran). Its metrics and result are in "
                        f"{rec.storage_uri}.") from None
    except BrokenPipeError:  # `orch logs JOB | head`
        return 0
    if view.hidden_warnings and not args.errors:
        err.print(f"[dim]({view.hidden_warnings} repeats of lines already shown were left out)[/]")
    return 0


def _with_newlines(lines: Iterator[str], tty: bool) -> Iterator[str]:
    for line in lines:
        if tty and line.startswith("[rank "):  # colour only for a person at a terminal, never into pipes
            tag, _, rest = line.partition("] ")
            line = f"\x1b[36m{tag}]\x1b[0m {rest}"
        yield line + "\n"


def _ranks_from_storage(rec: JobRecord) -> dict[int, int]:
    """pid -> rank from the workers' own records (the latest worker group): covers lines Ray printed before
    its worker-group line, and Ray versions that word that line differently."""
    from orchestrator.storage import StorageError, open_store

    ranks: dict[int, int] = {}
    try:
        store = open_store(rec.storage_uri)
        for obj in store.list("workers/"):
            info = json.loads(store.get_bytes(obj.key))
            if isinstance(info, dict) and isinstance(info.get("pid"), int):
                ranks[info["pid"]] = int(info["rank"])
    except (StorageError, ValueError, KeyError, TypeError):
        pass
    return ranks
