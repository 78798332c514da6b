"""`orch report`: one self-contained HTML page for a job or a campaign (plots embedded as PNG data URIs).

Everything comes from storage (spec, metrics.jsonl, result.json, attempts, checkpoints, rank files; for a
campaign campaign.json, leaderboard.json and each trial's metrics.jsonl), so a report can be built for a
running job, a finished one, or one whose cluster is gone. The page opens offline: no scripts, no links out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.control.index import JobRecord
from orchestrator.core.campaign_summary import CAMPAIGN_FILE, LEADERBOARD_FILE
from orchestrator.core.metrics_log import METRICS_KEY, read_jsonl
from orchestrator.core.run import ATTEMPTS_DIR, WORKERS_DIR, read_result, trial_key, utc_now
from orchestrator.storage import ObjectStore, StorageError

REPORT_KEY = "report.html"
PLOTS_PREFIX = "report/"


@dataclass
class Report:
    html: str
    pngs: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG, also embedded in the page


def build_report(rec: JobRecord, store: ObjectStore) -> Report:
    return _campaign_report(rec, store) if rec.kind == "campaign" else _job_report(rec, store)


def publish(report: Report, store: ObjectStore) -> list[str]:
    """Store report.html and its PNGs next to the results; returns the keys written."""
    keys = []
    for name, png in report.pngs.items():
        store.put_bytes(PLOTS_PREFIX + name, png)
        keys.append(PLOTS_PREFIX + name)
    store.put_bytes(REPORT_KEY, report.html.encode())
    return [*keys, REPORT_KEY]


# ---- reading storage ---------------------------------------------------------------------------------------
def _json(store: ObjectStore, key: str) -> Any:
    try:
        return json.loads(store.get_bytes(key))
    except (StorageError, ValueError):
        return None


def _rows(store: ObjectStore, key: str = METRICS_KEY) -> list[dict[str, Any]]:
    return read_jsonl(store, key)


def _listed_json(store: ObjectStore, prefix: str) -> list[dict[str, Any]]:
    try:
        keys = sorted(o.key for o in store.list(prefix))
    except StorageError:
        return []
    return [v for v in (_json(store, k) for k in keys if k.endswith(".json")) if isinstance(v, dict)]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in rows if not r.get("final") and "step" in r
              and isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


# ---- plots -----------------------------------------------------------------------------------------------------
def _figure(panels: list[tuple[str, list[tuple[str, list[float], list[float]]]]], title: str) -> bytes | None:
    """One PNG with a panel per (y label, [(series label, steps, values)]); None when there is nothing to draw."""
    panels = [(label, [s for s in series if s[1]]) for label, series in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    from matplotlib.figure import Figure  # not pyplot: no process-wide state or GUI backend

    fig = Figure(figsize=(9, 3.2 * len(panels)), dpi=100)
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, (ylabel, series) in zip(axes[:, 0], panels, strict=True):
        for label, steps, values in series:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("training step")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _job_plots(rows: list[dict[str, Any]], title: str) -> dict[str, bytes]:
    rate_key = "tokens_per_s" if any("tokens_per_s" in r for r in rows) else "samples_per_s"
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval_") and k != "eval_loss"})
    figures = {
        "loss.png": _figure([("loss", [("train loss", *_series(rows, "loss")),
                                       ("eval loss", *_series(rows, "eval_loss"))]),
                             *[(k, [(k, *_series(rows, k))]) for k in eval_keys]], f"{title}: loss and eval"),
        "throughput.png": _figure([(rate_key.replace("_per_s", "/s"), [(rate_key, *_series(rows, rate_key))]),
                                   ("step time (s)", [("step_time_s", *_series(rows, "step_time_s"))]),
                                   ("MFU", [("mfu", *_series(rows, "mfu"))])], f"{title}: throughput"),
        "optimizer.png": _figure([("learning rate", [("lr", *_series(rows, "lr"))]),
                                  ("gradient norm", [("grad_norm", *_series(rows, "grad_norm"))])],
                                 f"{title}: learning rate and gradient norm"),
    }
    return {name: png for name, png in figures.items() if png is not None}


# ---- HTML ------------------------------------------------------------------------------------------------------
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
font-size:13px}th{background:#f2f2f2}pre{background:#f7f7f7;padding:10px;font-size:12px;overflow:auto}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}.muted{color:#777}"""


def _esc(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.6g}"
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr>" if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{_esc(name)}" src="data:image/png;base64,{data}">'


def _page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<h2>{_esc(h)}</h2>{content}" for h, content in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>"
            f'<p class="muted">generated {_esc(utc_now())} by orch report</p>{body}</body></html>')


def _job_report(rec: JobRecord, store: ObjectStore) -> Report:
    from orchestrator.core.checkpoints import list_checkpoints

    rows = _rows(store)
    pngs = _job_plots(rows, rec.id)
    result = read_result(store) or {}
    summary = [["state", rec.state.value], ["created", rec.created_at], ["started", rec.started_at],
               ["finished", rec.finished_at], ["message", rec.message], ["storage", rec.storage_uri]]
    final = result.get("final_metrics") or {}
    summary += [[k, v] for k, v in sorted(final.items()) if k not in ("final", "time")]
    try:
        ckpts = list_checkpoints(store)
    except StorageError:
        ckpts = []
    ckpt_rows = [[c.step, c.created, f"{c.size / 2**20:.2f} MiB", "yes" if c.committed else "no",
                  ", ".join(f"{k}={v:.4g}" for k, v in sorted(c.metrics.items())
                            if k in ("loss", "eval_loss", "eval_accuracy"))] for c in ckpts]
    attempts = _listed_json(store, ATTEMPTS_DIR)
    attempt_rows = [[a.get("attempt"), a.get("started_at"), a.get("restored_step")] for a in attempts]
    sections = [("Summary", _table(["", ""], summary)),
                ("Curves", "".join(_img(n, p) for n, p in pngs.items()) or '<p class="muted">no metrics yet</p>'),
                ("Memory per worker", _memory_table(rec, store)),
                ("Checkpoints", _table(["step", "created", "size", "committed", "metrics"], ckpt_rows)),
                ("Attempts", _table(["attempt", "started", "restored from step"], attempt_rows)),
                ("Spec", f"<pre>{_esc(yaml.safe_dump(rec.spec, sort_keys=False))}</pre>")]
    return Report(_page(f"Job {rec.id}", sections), pngs)


def _memory_table(rec: JobRecord, store: ObjectStore) -> str:
    """Measured model states per rank (from the rank files) next to the estimate."""
    from orchestrator.core.errors import OrchError
    from orchestrator.core.estimate import estimate
    from orchestrator.core.spec import parse_spec

    ranks = [r for r in _listed_json(store, WORKERS_DIR) if isinstance(r.get("memory"), dict)]
    try:
        est = estimate(parse_spec(rec.spec, source=f"job {rec.id} spec"))
    except OrchError:  # a custom workload: show the measurements alone
        est = None
    names = ["params", "grads", "master", "optimizer_states", "model_states"]
    rows = [[f"rank {r['rank']}", *[f"{r['memory'].get(n, 0) / 2**20:.2f}" for n in names],
             f"{r['memory'].get('peak_rss', 0) / 2**20:.0f}"] for r in ranks]
    if est is not None:
        values = [est.component(n) for n in names[:-1]] + [est.model_states]
        rows.append(["estimate", *[f"{v / 2**20:.2f}" for v in values], ""])
    return _table(["MiB", *names, "peak RSS"], rows)


def _campaign_report(rec: JobRecord, store: ObjectStore) -> Report:
    summary = _json(store, CAMPAIGN_FILE) or {}
    board = _json(store, LEADERBOARD_FILE) or []
    metric = summary.get("metric") or rec.spec.get("metric") or "loss"
    trial_ids = [t["id"] for t in board] or [t["id"] for t in summary.get("trials", [])]
    series = [(tid, *_series(_rows(store, f"{trial_key(tid)}/{METRICS_KEY}"), metric)) for tid in trial_ids]
    png = _figure([(metric, series)], f"{rec.id}: {metric} per trial")
    pngs = {"metric_vs_step.png": png} if png else {}
    board_rows = [[t.get("rank"), t.get("id"), t.get("state"), t.get("value"), t.get("step"),
                   json.dumps(t.get("config", {}), sort_keys=True)] for t in board]
    best = summary.get("best_trial") or {}
    info = [["state", rec.state.value], ["created", rec.created_at], ["finished", rec.finished_at],
            ["metric", f"{metric} ({summary.get('mode', '')})"], ["best trial", best.get("id")],
            ["best value", best.get("value")], ["best checkpoint", best.get("checkpoint_uri")],
            ["message", rec.message]]
    plots = "".join(_img(n, p) for n, p in pngs.items()) or '<p class="muted">no trial metrics yet</p>'
    sections = [("Summary", _table(["", ""], info)),
                ("Metric vs step", plots),
                ("Leaderboard", _table(["rank", "trial", "state", metric, "at step", "config"], board_rows)),
                ("Spec", f"<pre>{_esc(yaml.safe_dump(rec.spec, sort_keys=False))}</pre>")]
    return Report(_page(f"Campaign {rec.id}", sections), pngs)
