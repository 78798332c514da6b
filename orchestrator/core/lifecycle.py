"""The lifecycle decision: what a record's state becomes, given what Ray and storage say. Pure; no I/O.

The control plane observes (the record, Ray's status of its newest submission, the verdict its driver wrote)
and acts on the `Transition` this returns; jobs, campaigns and `orch sync` all decide here. In short:

| Ray says          | the run's verdict           | job                                 | campaign              |
| ----------------- | --------------------------- | ----------------------------------- | --------------------- |
| unreachable       | -                           | stay (a remote cluster may return)  | stay                  |
| PENDING / RUNNING | -                           | STARTING / RUNNING                  | STARTING / RUNNING    |
| SUCCEEDED         | SUCCEEDED                   | SUCCEEDED                           | SUCCEEDED             |
| SUCCEEDED         | none / other                | FAILED (no successful result)       | FAILED, resume hint   |
| FAILED / unknown  | FAILED (result or log line) | FAILED with the driver's reason     | FAILED, resume hint   |
| FAILED / unknown  | none; restarts left         | QUEUED: resubmitted, resumes        | FAILED: driver lost   |
| STOPPED           | -                           | CANCELLED if asked, else as FAILED  | CANCELLED if asked    |
| cluster stopped   | -                           | CANCELLED: cluster stopped          | CANCELLED             |

A record that does not exist yet (`state=None`, rebuilt by `orch sync`) takes the state its verdict or Ray
says, and is never resubmitted: nobody knows whether it was cancelled on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.core.states import JobState

UNREACHABLE = "UNREACHABLE"  # Ray could not be asked (a remote cluster that may come back)
CLUSTER_STOPPED = "CLUSTER_STOPPED"  # its cluster was stopped on purpose (`orch cluster down`, idle stop)
CLUSTER_GONE = "the local Ray cluster it ran on has stopped"

_FROM_RAY = {"PENDING": JobState.STARTING, "RUNNING": JobState.RUNNING, "SUCCEEDED": JobState.SUCCEEDED,
             "FAILED": JobState.FAILED}


@dataclass(frozen=True)
class Observation:
    """Everything the decision looks at."""

    id: str
    kind: Literal["job", "campaign"]
    state: JobState | None  # None: no record yet (orch sync rebuilds it)
    ray_status: str | None  # Ray's status name; None when Ray does not know the submission; UNREACHABLE
    ray_message: str = ""
    verdict: str | None = None  # what the run wrote: result.json status (job) or campaign.json state
    verdict_reason: str = ""  # the reason it wrote, or the driver's verdict line from Ray's log tail
    cancel_requested: bool = False
    submissions: int = 0  # Ray jobs submitted for this record so far
    max_restarts: int = 0  # driver losses a job may survive by resubmission


@dataclass(frozen=True)
class Transition:
    """What to do: nothing (target None), or move to `target` with `message` (QUEUED means resubmit)."""

    target: JobState | None
    message: str = ""

    @property
    def resubmit(self) -> bool:
        return self.target == JobState.QUEUED


STAY = Transition(None)


def decide(obs: Observation) -> Transition:
    if obs.ray_status == UNREACHABLE:
        return STAY
    if obs.state is None:
        return _rebuilt(obs)
    if obs.ray_status == CLUSTER_STOPPED:
        return Transition(JobState.CANCELLED, "cluster stopped") if not obs.state.terminal else STAY
    target = _ray_target(obs)
    if target is None or target == obs.state:
        return STAY
    if not target.terminal:
        # Only STARTING -> RUNNING moves forward; a stale PENDING never moves a RUNNING record back.
        return Transition(target) if (obs.state, target) == (JobState.STARTING, JobState.RUNNING) else STAY
    if obs.state.terminal:
        return STAY
    return _campaign_ended(obs, target) if obs.kind == "campaign" else _job_ended(obs, target)


def _ray_target(obs: Observation) -> JobState | None:
    if obs.ray_status is None:
        return JobState.FAILED  # Ray lost it, or the embedded cluster it ran on is gone
    if obs.ray_status == "STOPPED":
        return JobState.CANCELLED if obs.cancel_requested else JobState.FAILED
    return _FROM_RAY.get(obs.ray_status)


def _job_ended(obs: Observation, target: JobState) -> Transition:
    if target == JobState.SUCCEEDED:
        if obs.verdict == "SUCCEEDED":
            return Transition(JobState.SUCCEEDED)
        return Transition(JobState.FAILED, "the driver exited without writing a successful result.json")
    if target == JobState.CANCELLED:
        return Transition(JobState.CANCELLED, "cancelled by user")
    if obs.verdict_reason:
        return Transition(JobState.FAILED, obs.verdict_reason)  # the driver failed the job and said why
    if obs.verdict is None and not obs.cancel_requested and obs.submissions <= obs.max_restarts:
        # No verdict: the driver (or its cluster) died, not the training. Run it again; the workers continue
        # from the newest verified checkpoint, so nothing is lost and nothing runs twice.
        return Transition(JobState.QUEUED, (
            f"driver lost ({obs.ray_message or 'no verdict written'}); resubmitted "
            f"({obs.submissions}/{obs.max_restarts} restarts used)"))
    return Transition(JobState.FAILED, obs.ray_message or "lost by Ray (was the cluster restarted?)")


def _campaign_ended(obs: Observation, target: JobState) -> Transition:
    if target == JobState.SUCCEEDED and obs.verdict == "SUCCEEDED":
        return Transition(JobState.SUCCEEDED, obs.verdict_reason)  # e.g. which budget ended it
    if target == JobState.CANCELLED:
        return Transition(JobState.CANCELLED, f"cancelled by user; continue it with: orch resume {obs.id}")
    reason = obs.verdict_reason
    if target == JobState.SUCCEEDED:
        reason = "the campaign driver exited without a successful campaign.json"
    elif obs.verdict not in ("FAILED", "INTERRUPTED"):  # no verdict of its own: the driver died
        reason = f"campaign driver lost ({obs.ray_message or 'no verdict written'})"
    return Transition(JobState.FAILED, f"{reason}. Continue it with: orch resume {obs.id}")


def _rebuilt(obs: Observation) -> Transition:
    """The state of a run found in storage with no record (orch sync)."""
    if obs.verdict in ("SUCCEEDED", "FAILED"):
        return Transition(JobState(obs.verdict), obs.verdict_reason)
    if obs.ray_status is None:
        return Transition(JobState.FAILED, (
            "lost: no result.json and the Ray cluster does not know it (the index was rebuilt by orch sync "
            "after the cluster it ran on went away); `orch resume` continues it from its newest checkpoint"))
    if obs.ray_status == "STOPPED":
        return Transition(JobState.CANCELLED, "stopped (found by orch sync)")
    target = _FROM_RAY.get(obs.ray_status, JobState.FAILED)
    if target in (JobState.STARTING, JobState.RUNNING):
        return Transition(target)
    # Ended without a verdict of its own: SUCCEEDED without result.json is no success.
    return Transition(JobState.FAILED,
                      f"no result.json; Ray says the job ended {obs.ray_status}: {obs.ray_message}".rstrip(": "))
