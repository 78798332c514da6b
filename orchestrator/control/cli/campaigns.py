"""`orch tune` and the campaign views of `orch status` / `orch resume`: tuning campaigns in the terminal."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from orchestrator.control.cli.tables import print_id_table
from orchestrator.control.index import JobRecord
from orchestrator.control.progress import follow_job

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
TRIAL_STYLES = {"SUCCEEDED": "green", "STOPPED": "yellow", "FAILED": "red", "RUNNING": "cyan", "PAUSED": "blue",
                "PENDING": "white", "INTERRUPTED": "magenta"}


def cmd_tune(args: argparse.Namespace) -> int:
    from orchestrator.control.cli.client import client

    orch = client(args)
    campaign = orch.tune(args.spec, args.set or [])
    from orchestrator.core.campaign_spec import Campaign

    rec = campaign.record()
    resolved = Campaign.from_record(rec.spec)
    spec, workers = resolved.spec, resolved.base_job.scaling.num_workers
    launch = ("each trains in its own Tune process" if resolved.trials_in_process
              else f"each starts a Ray Train worker group of {workers}")
    err.print(f"Submitted campaign {rec.id}: {spec.trial_count()} trials ({launch}), at most "
              f"{rec.spec['concurrency']} at a time, {spec.scheduler.type} scheduler, "
              f"{spec.search.algorithm} search, {spec.mode} {spec.metric}.")
    return _finish(orch, rec, args.wait)


def resume_campaign_cmd(orch: Any, campaign: Any, args: argparse.Namespace) -> int:
    status = campaign.resume()
    err.print(f"Resumed campaign {status.id}: finished trials stay finished, the others continue from their newest "
              "verified checkpoints.")
    return _finish(orch, campaign.record(), args.wait)


def _finish(orch: Any, rec: JobRecord, wait: bool) -> int:
    if not wait:
        err.print(f"Follow it with: orch status {rec.id}")
        print(rec.id)
        return 0
    rec = follow_job(orch.manager, rec.id, err, line=campaign_progress_line)
    print(rec.id)
    return 0 if rec.state.value == "SUCCEEDED" else 1


def campaign_progress_line(rec: JobRecord) -> Text:
    m = rec.metrics
    parts = [f"{rec.id}  {rec.state.value}"]
    if "total" in m:
        planned = m.get("planned") or m["total"]
        parts.append(f"trials {m.get('succeeded', 0) + m.get('stopped', 0) + m.get('failed', 0)}/{planned} done: "
                     f"{m.get('running', 0)} running, {m.get('succeeded', 0)} finished, "
                     f"{m.get('stopped', 0)} stopped early, {m.get('failed', 0)} failed"
                     + (f", {m['interrupted']} interrupted" if m.get("interrupted") else ""))
    if m.get("best") is not None:
        parts.append(f"best {m.get('metric')} {m['best']:.4g} ({m.get('best_trial')})")
    if m.get("total_steps"):
        after_stop = f" ({m['steps_after_stop']} after stop decisions)" if m.get("steps_after_stop") else ""
        parts.append(f"{m['total_steps']} steps{after_stop}")
    return Text("  ".join(parts))


def show_campaign(campaign: Any, as_json: bool) -> int:
    """`orch status CAMPAIGN`: the record, the best trial and a leaderboard of every trial."""
    from orchestrator.core.campaign_summary import leaderboard

    status = campaign.summary()
    rec = campaign.record()
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    out.print(f"[bold]{rec.id}[/]  campaign  {_styled(rec.state.value)}"
              + (f"  {escape(rec.message)}" if rec.message else ""))
    out.print(campaign_progress_line(rec))
    best = status["best_trial"]
    if best:
        out.print(f"best: trial {best['id']}  {best['metric']} = {best['value']:.6g} at step {best['step']}  "
                  f"config {escape(_config_text(best['config']))}")
        out.print(f"      checkpoint {best['checkpoint_uri'] or '(none committed at or before that step)'}")
    board = leaderboard(status["trials"], status["mode"])
    if not board:
        out.print("No trials have started yet.")
        return 0
    keys = sorted({k for row in board for k in row["config"]})
    rows = [[str(row["rank"]), row["id"], _styled(row["state"]), "" if row["value"] is None else f"{row['value']:.4g}",
             str(row["step"] or ""), str(row["steps"]), *[escape(_fmt(row["config"].get(k))) for k in keys]]
            for row in board]
    print_id_table(out, ["#", "TRIAL", "STATE", status["metric"], "AT STEP", "STEPS", *_short_names(keys)], "TRIAL",
                   rows, title=f"Leaderboard ({status['mode']} {status['metric']}; last measured value of each trial)")
    out.print(f"plot: {status['plot_uri']}")
    return 0


def _short_names(keys: list[str]) -> list[str]:
    """Column names for tuned fields: the last part of the dotted path (`lr`), the whole path if ambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [short if last.count(short) == 1 else key for short, key in zip(last, keys, strict=True)]


def _styled(state: str) -> str:
    style = TRIAL_STYLES.get(state, {"CANCELLED": "yellow", "STARTING": "blue", "QUEUED": "white"}.get(state))
    return f"[{style}]{state}[/]" if style else state


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(config.items()))


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("tune", cmd_tune, "Run a tuning campaign: Ray Tune over training jobs (see jobs/examples/tune-*.yaml).")
    p.add_argument("spec")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a campaign field (dotted path; search_space.<key>.<field>, overrides.<key>)")
    p.add_argument("--wait", action="store_true",
                   help="show live progress; exit 0 only if the campaign SUCCEEDED")
