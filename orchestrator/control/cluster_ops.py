"""Operating the embedded cluster: what runs on it, stopping it on purpose, stopping it when idle.

A cluster stopped on purpose takes its jobs with it, so they are CANCELLED ("cluster stopped") before it
goes, and its address is remembered so that nothing later mistakes them for lost drivers and resubmits them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from orchestrator.control.cluster_address import ClusterUnavailable
from orchestrator.control.idle import IdleDecision, idle_decision
from orchestrator.control.index import JobRecord, utc_now
from orchestrator.control.job_secrets import drop as drop_secrets
from orchestrator.control.local_cluster import LocalClusterInfo
from orchestrator.core.errors import OrchError
from orchestrator.core.states import ACTIVE_STATES, JobState

CLUSTER_STOPPED = "cluster stopped"
RAY_ACTIVE = ("PENDING", "RUNNING")


@dataclass(frozen=True)
class ClusterUse:
    records: list[JobRecord]  # this home's queued/starting/running jobs and campaigns on the embedded cluster
    other_ray_jobs: list[str]  # Ray jobs running there that this home did not submit (other ORCH_HOMEs, users)

    @property
    def busy(self) -> bool:
        return bool(self.records or self.other_ray_jobs)


def embedded_records(manager: Any) -> list[JobRecord]:
    return [rec for rec in manager.db.list(states=[JobState.QUEUED, *ACTIVE_STATES])
            if rec.ray_address and manager.local.was_embedded(rec.ray_address)]


def ray_active_jobs(manager: Any, url: str) -> list[str] | None:
    """Submission ids of Ray jobs pending or running on `url`; None if Ray cannot be asked."""
    try:
        jobs = manager.ray_for(url).client.list_jobs()
    except (ClusterUnavailable, ConnectionError, RuntimeError, OSError):
        return None
    return [job.submission_id or job.job_id or "?" for job in jobs if getattr(job.status, "value", "") in RAY_ACTIVE]


def cluster_use(manager: Any, info: LocalClusterInfo) -> ClusterUse:
    from orchestrator.control.manager import ray_submission_id

    records = embedded_records(manager)
    ours = {ray_submission_id(rec) for rec in records}
    others = [job for job in ray_active_jobs(manager, info.dashboard_url) or [] if job not in ours]
    return ClusterUse(records, others)


def stop_local_cluster(manager: Any, cancel: bool) -> list[JobRecord]:
    """`orch cluster down`: refuse while anything runs there, unless `cancel`; returns what was cancelled.

    Raises OrchError (exit 2) listing the jobs when it refuses.
    """
    info = manager.local.info()
    if info is None:
        return []
    use = cluster_use(manager, info)
    if use.busy and not cancel:
        listed = [f"{rec.id} ({rec.kind}, {rec.state.value})" for rec in use.records]
        listed += [f"{job} (Ray job not submitted from this ORCH_HOME)" for job in use.other_ray_jobs]
        raise OrchError(
            f"The local Ray cluster is in use: {'; '.join(listed)}. Stopping it would kill them. Wait for them "
            "to finish, cancel them (orch cancel ID), or run `orch cluster down --cancel` to cancel them and "
            "stop the cluster."
        )
    cancelled = [rec for rec in (cancel_for_stop(manager, r) for r in use.records) if rec is not None]
    manager.local.down()
    return cancelled


def cancel_for_stop(manager: Any, rec: JobRecord) -> JobRecord | None:
    """Mark a record CANCELLED before its cluster goes, so no reconcile ever sees it as a lost driver.

    Compare-and-set against a scheduler that may move it (QUEUED -> STARTING) at the same moment.
    """
    for _ in range(20):
        rec = manager.db.get(rec.id)
        if rec.state.terminal:
            return None
        manager.db.update(rec.id, cancel_requested=True)
        if manager.db.transition(rec.id, rec.state, JobState.CANCELLED, finished_at=utc_now(),
                                 message=CLUSTER_STOPPED):
            drop_secrets(manager.secrets_dir, rec.id)
            return manager.db.get(rec.id)
        time.sleep(0.05)
    return None


def idle_check(manager: Any, info: LocalClusterInfo, now: float | None = None) -> tuple[IdleDecision, ClusterUse]:
    """The watcher's view: busy if this home has work there or Ray runs anyone's job (another ORCH_HOME can
    use this cluster through --address); anything busy counts as activity now."""
    use = cluster_use(manager, info)
    if use.busy:
        manager.local.touch_activity()
    now = time.time() if now is None else now
    return idle_decision(now, manager.local.last_active(info), info.idle_stop_s, use.busy), use


def stop_if_idle(manager: Any, info: LocalClusterInfo) -> bool:
    """Stop the embedded cluster if it has been idle long enough; decided again under the cluster lock."""
    decision, _ = idle_check(manager, info)
    if not decision.stop:
        return False
    return manager.local.down(still_idle=lambda current: current.pid == info.pid and idle_check(
        manager, current)[0].stop)
