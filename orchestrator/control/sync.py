"""`orch sync`: rebuild the metadata index (jobs.db) from what storage and Ray know.

The index is only an index: every job leaves `<storage>/jobs/<job-id>/` with its spec, metrics, attempts and,
once it ends, result.json. Sync scans that for each storage location and re-creates the record of every job
the index lacks:

  result.json says SUCCEEDED/FAILED        -> that state, with the driver's reason
  no result, Ray runs it                   -> RUNNING (STARTING while Ray still queues it); the scheduler
                                              then follows it as if nothing had happened
  no result, Ray knows it ended            -> FAILED or CANCELLED, with Ray's message
  no result, Ray does not know it          -> FAILED: it was lost (it can be resumed from its checkpoints)

Records the index already has are left alone: those are kept up to date by every `orch` command, and storage
cannot tell a job still waiting in the queue from a lost one. A job whose spec appeared moments ago and that
nobody knows yet is skipped rather than declared lost: it may be an `orch submit` in progress.
"""

from __future__ import annotations

import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import yaml

from orchestrator.control.cluster_address import ClusterUnavailable
from orchestrator.control.index import JobRecord
from orchestrator.control.manager import JobManager
from orchestrator.core.errors import OrchError, SpecError
from orchestrator.core.lifecycle import Observation, decide
from orchestrator.core.run import (
    RESULT_KEY,
    SPEC_KEY,
    count_attempts,
    first_attempt_start,
    job_key,
    latest_metrics,
    read_metrics,
    read_result,
    read_spec,
)
from orchestrator.core.spec import parse_spec
from orchestrator.core.states import JobState
from orchestrator.storage import ObjectInfo, ObjectStore, open_store

# A spec younger than this, with no record and unknown to Ray, may belong to a submit still in progress.
IN_FLIGHT = timedelta(seconds=60)
JOB_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class RaySubmission:
    """The newest Ray job of one orch job, and how many Ray jobs (submissions) it has had."""

    url: str
    status: str
    message: str
    submissions: int


@dataclass
class SyncResult:
    added: list[JobRecord] = field(default_factory=list)
    already_indexed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # job id -> why


def ray_submissions(manager: JobManager, url: str | None) -> dict[str, RaySubmission]:
    """What the cluster at `url` knows, by orch job id. Empty when there is no cluster to ask."""
    if url is None:
        return {}  # no --address and no embedded cluster running: nothing can still be running
    try:
        jobs = manager.ray_for(url).client.list_jobs()
    except ClusterUnavailable:
        raise  # already says what to fix
    except Exception as exc:  # Ray raises RuntimeError/ConnectionError variants
        raise ClusterUnavailable(
            f"Cannot list the jobs of the Ray cluster at {url} ({exc}). Sync needs it to tell running jobs from "
            "lost ones: start it, or point --address / ORCH_RAY_ADDRESS at the right cluster."
        ) from None
    by_job: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for job in jobs:
        job_id = (job.metadata or {}).get("orch_job_id")
        if job_id and job.submission_id:
            # Submission ids are the job id, then '<job id>-rN' for the N-th resubmission.
            suffix = job.submission_id.removeprefix(job_id)
            number = int(suffix[2:]) if suffix.startswith("-r") and suffix[2:].isdigit() else 1
            by_job[job_id].append((number, job))
    found = {}
    for job_id, numbered in by_job.items():
        number, newest = max(numbered, key=lambda item: item[0])
        found[job_id] = RaySubmission(url=url, status=newest.status.value, message=newest.message or "",
                                      submissions=number)
    return found


def job_prefixes(objects: list[ObjectInfo]) -> dict[str, datetime]:
    """{job id: when its spec.yaml was written} from a listing of `jobs/`."""
    specs = {}
    for info in objects:
        parts = info.key.split("/")
        if len(parts) == 3 and f"{parts[0]}/{parts[1]}" == job_key(parts[1]) and parts[2] == SPEC_KEY:
            specs[parts[1]] = info.mtime
    return specs


def rebuild_record(job_id: str, job_store: ObjectStore, spec_written: datetime,
                   ray: RaySubmission | None, fallback_url: str | None) -> JobRecord:
    """The record of one job, from its storage prefix and (if Ray knows it) its newest Ray job."""
    spec = read_spec(job_store)
    if not isinstance(spec, dict):
        raise SpecError(f"{job_store.uri}/spec.yaml is not a job spec mapping")
    try:
        parsed = parse_spec(spec, source=f"{job_store.uri}/spec.yaml")
        cpus = parsed.scaling.num_workers * parsed.scaling.cpus_per_worker
        gpus = parsed.scaling.num_workers * parsed.scaling.worker_gpus
        spec = parsed.redacted()
    except SpecError:  # written by another version: index it anyway, it cannot be launched again as is
        cpus = gpus = 0.0
    result = read_result(job_store)
    metrics = read_metrics(job_store)
    decision = decide(Observation(
        id=job_id, kind="job", state=None, ray_status=ray.status if ray is not None else None,
        ray_message=ray.message if ray is not None else "", verdict=(result or {}).get("status"),
        verdict_reason=str((result or {}).get("reason") or "")))
    state, message = decision.target or JobState.FAILED, decision.message  # a rebuilt record always gets a state
    finished_at = (result or {}).get("finished_at") if result and result.get("status") == state.value else None
    if not isinstance(finished_at, str):  # result.json is written by whoever can write storage
        finished_at = None
    if state.terminal and finished_at is None:
        finished_at = _iso(datetime.now(timezone.utc))
    return JobRecord(
        id=job_id, name=str(spec.get("name", job_id)), state=state, storage_uri=job_store.uri, spec=spec,
        ray_address=ray.url if ray is not None else fallback_url, cpus=cpus, gpus=gpus,
        attempts=count_attempts(job_store), submissions=ray.submissions if ray is not None else 0,
        message=message, metrics=latest_metrics(metrics) if metrics else {}, created_at=_iso(spec_written),
        started_at=first_attempt_start(job_store), finished_at=finished_at,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def sync_index(manager: JobManager, storage_uris: list[str], now: datetime | None = None) -> SyncResult:
    """Add a record for every job found in `storage_uris` that the index lacks; see the module docstring."""
    now = now or datetime.now(timezone.utc)
    url = manager.cluster_url(start=False)
    ray = ray_submissions(manager, url)
    known = {rec.id for rec in manager.db.list()}
    result = SyncResult()
    found: list[tuple[datetime, str, ObjectStore]] = []
    for uri in dict.fromkeys(storage_uris):
        base = open_store(uri)
        base.check()
        for job_id, written in job_prefixes(base.list("jobs")).items():
            if not JOB_ID.match(job_id):  # storage is written by others: a key must not steer where we read
                result.skipped[ascii(job_id)[1:-1]] = "not a job id (letters, digits, - _ .; no '..')"
                continue
            found.append((written, job_id, base.child(job_key(job_id))))
    for written, job_id, job_store in sorted(found, key=lambda item: (item[0], item[1])):  # queue order
        if job_id in known:
            result.already_indexed.append(job_id)
            continue
        if job_id not in ray and not job_store.exists(RESULT_KEY) and now - written < IN_FLIGHT:
            result.skipped[job_id] = "its spec was written moments ago (a submit in progress?); sync again later"
            continue
        try:
            rec = rebuild_record(job_id, job_store, written, ray.get(job_id), url)
            manager.db.upsert(rec)
        except (OrchError, yaml.YAMLError, ValueError, TypeError, sqlite3.Error) as exc:  # a corrupt entry
            result.skipped[job_id] = f"unreadable: {str(exc)[:300]}"
            continue
        known.add(job_id)
        result.added.append(rec)
    return result
