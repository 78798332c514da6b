"""The run contract: what a job (or a campaign trial) leaves in storage, and the one place that spells it.

    <storage>/jobs/<job-id>/spec.yaml                 the spec as submitted (secrets redacted)
    <storage>/jobs/<job-id>/metrics.jsonl             one line per report (see core/metrics_log.py)
    <storage>/jobs/<job-id>/attempts/attempt-NNNN.json one per (re)start of the worker group, written by rank 0
    <storage>/jobs/<job-id>/workers/rank-NNNNN.json   what each rank holds (shard sizes, measured memory)
    <storage>/jobs/<job-id>/checkpoints/...           the checkpoint protocol (core/checkpoints/)
    <storage>/jobs/<job-id>/result.json               the verdict, written last, only by `write_result`
    <storage>/jobs/<job-id>/tracking.json             experiment-tracker logging: run id, rows logged, errors
    <storage>/campaigns/<id>/trials/<trial-id>/...    a trial: the same layout as a job

The runtime writes these and the control plane reads them; neither spells a key anywhere else. A driver whose
storage fails prints its verdict as a `VERDICT_PREFIX` line, which Ray keeps with the job, so the control plane
can still say why it failed.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from orchestrator.core import safe_yaml
from orchestrator.core.checkpoints import list_checkpoints
from orchestrator.core.metrics_log import METRICS_KEY, read_jsonl
from orchestrator.storage import ObjectStore, StorageError

JOBS_PREFIX = "jobs"
CAMPAIGNS_PREFIX = "campaigns"
TRIALS_PREFIX = "trials"
SPEC_KEY = "spec.yaml"
RESULT_KEY = "result.json"
TRACKING_KEY = "tracking.json"
ATTEMPTS_DIR = "attempts/"
WORKERS_DIR = "workers/"
VERDICT_PREFIX = "orch: job FAILED: "
# What a result.json may say. STOPPED: a campaign trial its scheduler ended early.
RESULT_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- where ---------------------------------------------------------------------------------------------------
def job_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}/{job_id}"


def campaign_key(campaign_id: str) -> str:
    return f"{CAMPAIGNS_PREFIX}/{campaign_id}"


def trial_key(trial_id: str) -> str:
    """A trial's prefix inside its campaign's store."""
    return f"{TRIALS_PREFIX}/{trial_id}"


def rank_key(rank: int) -> str:
    return f"{WORKERS_DIR}rank-{rank:05d}.json"


def attempt_key(attempt: int) -> str:
    return f"{ATTEMPTS_DIR}attempt-{attempt:04d}.json"


# ---- spec ----------------------------------------------------------------------------------------------------
def write_spec(store: ObjectStore, data: dict[str, Any]) -> None:
    """The spec as the run will use it; callers pass it redacted."""
    store.put_bytes(SPEC_KEY, safe_yaml.dump(data).encode())


def read_spec(store: ObjectStore) -> Any:
    """The stored spec as YAML data (callers validate it); aliases, duplicate keys and huge files refused."""
    return safe_yaml.load(store.get_bytes(SPEC_KEY), "stored spec.yaml")


# ---- metrics, attempts ---------------------------------------------------------------------------------------
def read_metrics(store: ObjectStore) -> list[dict[str, Any]]:
    return read_jsonl(store, METRICS_KEY)


def latest_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest value of every metric (eval metrics are reported less often than loss)."""
    merged: dict[str, Any] = {}
    for row in rows:
        merged.update({k: v for k, v in row.items() if v is not None})
    return merged


def count_attempts(store: ObjectStore) -> int:
    try:
        return len(store.list(ATTEMPTS_DIR))
    except StorageError:
        return 0


def write_attempt(store: ObjectStore, restored_step: int) -> int:
    """Record one (re)start of the worker group (rank 0 only); returns its number."""
    attempt = count_attempts(store) + 1
    store.put_bytes(attempt_key(attempt), json.dumps(
        {"attempt": attempt, "started_at": utc_now(), "restored_step": restored_step}, indent=2).encode())
    return attempt


def latest_attempt_start(store: ObjectStore) -> str | None:
    """When the newest attempt's workers started (None before any has)."""
    count = count_attempts(store)
    try:
        return json.loads(store.get_bytes(attempt_key(count))).get("started_at") if count else None
    except (StorageError, ValueError, AttributeError):
        return None


def first_attempt_start(store: ObjectStore) -> str | None:
    try:
        return json.loads(store.get_bytes(attempt_key(1))).get("started_at")
    except (StorageError, ValueError, AttributeError):
        return None


# ---- the verdict ---------------------------------------------------------------------------------------------
def read_result(store: ObjectStore) -> dict[str, Any] | None:
    """result.json, or None if there is none (or it is not a JSON object)."""
    try:
        result = json.loads(store.get_bytes(RESULT_KEY))
    except (StorageError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def write_tracking(store: ObjectStore, report: dict[str, Any]) -> None:
    """What the driver's experiment-tracker logging did so far (never fatal: a failed write is retried later)."""
    store.put_bytes(TRACKING_KEY, json.dumps(report, indent=2).encode())


def read_tracking(store: ObjectStore) -> dict[str, Any]:
    try:
        report = json.loads(store.get_bytes(TRACKING_KEY))
    except (StorageError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def summarize(store: ObjectStore, status: str, reason: str = "") -> dict[str, Any]:
    """What result.json says: the verdict plus the run's final metrics, attempts and committed checkpoints."""
    rows = read_metrics(store)
    final = next((r for r in reversed(rows) if r.get("final")), rows[-1] if rows else {})
    committed = [c.step for c in list_checkpoints(store) if c.committed]
    return {
        "status": status, "reason": reason, "finished_at": utc_now(),
        "final_metrics": final, "first_loss": next((r["loss"] for r in rows if "loss" in r), None),
        "last_step": max((r.get("step", 0) for r in rows), default=0),
        "attempts": count_attempts(store), "checkpoints": committed,
        **({"tracking": tracking} if (tracking := read_tracking(store)) else {}),
    }


def write_result(store: ObjectStore, status: str, reason: str = "") -> dict[str, Any]:
    """The one writer of result.json: the run's verdict, written last."""
    if status not in RESULT_STATUSES:
        raise ValueError(f"result status must be one of {RESULT_STATUSES}, not {status!r}")
    result = summarize(store, status, reason)
    store.put_bytes(RESULT_KEY, json.dumps(result, indent=2).encode())
    return result


def clear_result(store: ObjectStore) -> None:
    """A run about to start again has no verdict yet."""
    store.delete(RESULT_KEY)


def verdict_line(reason: str) -> str:
    """The line a failing driver prints first: Ray keeps it even when storage is what failed."""
    return f"{VERDICT_PREFIX}{reason}"


def verdict_from_logs(text: str) -> str | None:
    """The driver's own FAILED line, if Ray's job message (which carries the log tail) has one."""
    lines = [line for line in text.splitlines() if line.startswith(VERDICT_PREFIX)]
    return lines[-1].removeprefix(VERDICT_PREFIX).strip() if lines else None


def root_cause(exc: BaseException) -> str:
    """Ray wraps worker errors a few levels deep; the innermost message is the useful one. A worker whose process
    died (Ray Train's health check failed: killed, OOM) raised nothing itself, so the reason names its rank."""
    failures = getattr(exc, "worker_failures", None)  # Ray Train's WorkerGroupError: {world rank: error}
    if isinstance(failures, dict):
        dead = sorted(rank for rank, error in failures.items() if hasattr(error, "health_check_failure"))
        if dead:
            ranks = ", ".join(str(rank) for rank in dead)
            failure = failures[dead[0]].health_check_failure
            first = next((line.strip() for line in str(failure).splitlines() if line.strip()), "")
            return f"worker rank {ranks} died ({type(failure).__name__}: {first})"[:1000]
    return _innermost(exc)[:1000]


def _innermost(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
