"""What a campaign has found so far, from its trials' stores: campaign.json, leaderboard.json, a plot.

The campaign driver writes these to `<storage>/campaigns/<id>/` while Tune runs and once more at the end;
the CLI only reads them. Trial states are ours, not Tune's: a TERMINATED Tune trial either SUCCEEDED
(trained all its steps; its result.json says so) or was STOPPED early by the scheduler or the budget.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core import checkpoints
from orchestrator.core.campaign_spec import Campaign
from orchestrator.core.run import TRIALS_PREFIX, read_metrics, read_result, utc_now
from orchestrator.storage import ObjectStore, StorageError

CAMPAIGN_FILE = "campaign.json"
LEADERBOARD_FILE = "leaderboard.json"
PLOT_FILE = "metric_vs_step.png"
TRIAL_STATES = ("PENDING", "RUNNING", "PAUSED", "SUCCEEDED", "STOPPED", "FAILED")


@dataclass(frozen=True)
class TrialView:
    """What Tune knows about a trial: its id, Tune status and current config."""

    id: str
    tune_status: str  # PENDING, RUNNING, PAUSED, TERMINATED or ERROR
    config: dict[str, Any] = field(default_factory=dict)
    tune_step: int | None = None  # the step of the last report Tune processed


def trial_state(tune_status: str, result: dict[str, Any] | None, trained_to_end: bool) -> str:
    """`trained_to_end`: the workers wrote their final row (after the final checkpoint committed)."""
    if tune_status == "ERROR":
        return "FAILED"
    if tune_status == "TERMINATED":
        status = (result or {}).get("status")
        if status == "FAILED":
            return status
        return "SUCCEEDED" if status == "SUCCEEDED" or trained_to_end else "STOPPED"
    return tune_status if tune_status in TRIAL_STATES else "PENDING"


def summarize_trial(view: TrialView, store: ObjectStore, metric: str, mode: str) -> dict[str, Any]:
    all_rows = read_metrics(store)
    rows = [r for r in all_rows if not r.get("final")]
    result = read_result(store)
    state = trial_state(view.tune_status, result, trained_to_end=any(r.get("final") for r in all_rows))
    seen = rows
    if state == "STOPPED" and view.tune_step is not None:
        # Workers report asynchronously, so a stopped trial trains a little past the report Tune stopped it
        # at before it is torn down. Those steps count as spent; its metric is the one Tune judged it by.
        seen = [r for r in rows if int(r.get("step", 0)) <= view.tune_step]
    values = [(int(r["step"]), float(r[metric])) for r in seen
              if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    pick = min if mode == "min" else max
    return {
        "id": view.id,
        "state": state,
        "config": view.config,
        "last_metric": values[-1][1] if values else None,
        "last_metric_step": values[-1][0] if values else None,
        "best_metric": pick(v for _, v in values) if values else None,
        "steps": (steps := max((int(r.get("step", 0)) for r in rows), default=0)),
        "tune_step": view.tune_step,
        # Trained after the report the scheduler stopped it at: compute spent on nothing (0 when gated at rungs).
        "steps_after_stop": max(0, steps - view.tune_step) if state == "STOPPED" and view.tune_step else 0,
        "early_stopped": state == "STOPPED",
        "store_uri": store.uri,
        "reason": (result or {}).get("reason", "") if state == "FAILED" else "",
    }


def best_trial(trials: list[dict[str, Any]], metric: str, mode: str, trials_store: ObjectStore) -> dict | None:
    """The trial whose last measured metric is best, with the checkpoint holding that model."""
    scored = [t for t in trials if t["last_metric"] is not None]
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    best = min(scored, key=lambda t: sign * t["last_metric"])
    step = best["last_metric_step"]
    committed = [c.step for c in checkpoints.list_checkpoints(trials_store.child(best["id"])) if c.committed]
    # The model that was measured: the checkpoint at that step, else the newest one before it.
    ckpt_step = step if step in committed else max((s for s in committed if s <= step), default=None)
    return {
        "id": best["id"], "config": best["config"], "metric": metric, "value": best["last_metric"], "step": step,
        "state": best["state"], "checkpoint_step": ckpt_step,
        "checkpoint_uri": f"{best['store_uri']}/{checkpoints.step_prefix(ckpt_step)}" if ckpt_step is not None
        else None,
    }


def leaderboard(trials: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    sign = 1.0 if mode == "min" else -1.0
    ranked = sorted(trials, key=lambda t: (t["last_metric"] is None, sign * (t["last_metric"] or 0.0), t["id"]))
    return [{"rank": i + 1, "id": t["id"], "state": t["state"], "value": t["last_metric"],
             "step": t["last_metric_step"], "steps": t["steps"], "early_stopped": t["early_stopped"],
             "config": t["config"]} for i, t in enumerate(ranked)]


def campaign_summary(campaign_id: str, campaign: Campaign, views: list[TrialView], campaign_store: ObjectStore,
                     state: str, reason: str = "") -> dict[str, Any]:
    spec = campaign.spec
    trials_store = campaign_store.child(TRIALS_PREFIX)
    trials = [summarize_trial(v, trials_store.child(v.id), spec.metric, spec.mode)
              for v in sorted(views, key=lambda v: v.id)]  # creation order, whatever order Tune keeps them in
    counts = {s.lower(): sum(t["state"] == s for t in trials) for s in TRIAL_STATES}
    return {
        "id": campaign_id, "name": spec.name, "state": state, "reason": reason, "updated_at": utc_now(),
        "metric": spec.metric, "mode": spec.mode, "scheduler": spec.scheduler.type,
        "search": spec.search.algorithm, "planned_trials": spec.trial_count(),
        "trial_launch": campaign.trial_launch,
        "counts": {"total": len(trials), **counts},
        "total_steps": sum(t["steps"] for t in trials),
        "steps_after_stop": sum(t["steps_after_stop"] for t in trials),
        "best_trial": best_trial(trials, spec.metric, spec.mode, trials_store),
        "trials": trials,
    }


def write_reports(campaign_store: ObjectStore, summary: dict[str, Any], plot: bool) -> None:
    campaign_store.put_bytes(CAMPAIGN_FILE, json.dumps(summary, indent=2).encode())
    board = leaderboard(summary["trials"], summary["mode"])
    campaign_store.put_bytes(LEADERBOARD_FILE, json.dumps(board, indent=2).encode())
    if plot:
        campaign_store.put_bytes(PLOT_FILE, plot_png(summary, campaign_store.child(TRIALS_PREFIX)))


def read_summary(campaign_store: ObjectStore) -> dict[str, Any] | None:
    try:
        return json.loads(campaign_store.get_bytes(CAMPAIGN_FILE))
    except (StorageError, ValueError):
        return None


def plot_png(summary: dict[str, Any], trials_store: ObjectStore) -> bytes:
    """The metric against training step, one line per trial; early-stopped trials end in an x."""
    # The Figure API, not pyplot: this runs on Tune's callback thread, and pyplot keeps process-wide state.
    from matplotlib.figure import Figure

    metric = summary["metric"]
    best_id = (summary.get("best_trial") or {}).get("id")
    fig = Figure(figsize=(8, 5), dpi=100)
    ax = fig.subplots()
    for trial in summary["trials"]:
        last_step = trial.get("tune_step") if trial["early_stopped"] else None
        points = [(r["step"], r[metric]) for r in read_metrics(trials_store.child(trial["id"]))
                  if not r.get("final") and isinstance(r.get(metric), (int, float))
                  and (last_step is None or r["step"] <= last_step)]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        is_best = trial["id"] == best_id
        line, = ax.plot(steps, values, linewidth=2.5 if is_best else 1.0, alpha=1.0 if is_best else 0.7,
                        label=f"{trial['id']}{' (best)' if is_best else ''}")
        if trial["early_stopped"]:
            ax.plot(steps[-1], values[-1], marker="x", color=line.get_color(), markersize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title(f"{summary['name']} ({summary['id']}): {metric}, {summary['scheduler']} scheduler; x = stopped early")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
