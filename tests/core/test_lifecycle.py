"""The lifecycle decision as a table: (record, Ray, verdict, cancel, restarts) -> transition."""

import pytest

from orchestrator.core.lifecycle import CLUSTER_STOPPED, UNREACHABLE, Observation, decide
from orchestrator.core.states import JobState

Q, S, R = JobState.QUEUED, JobState.STARTING, JobState.RUNNING
OK, FAIL, CANCEL = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED
LOST = "driver lost (boom); resubmitted (1/2 restarts used)"

JOBS = [
    # state, Ray status, Ray message, verdict, its reason, cancel asked, submissions, max restarts -> target, message
    (R, UNREACHABLE, "", None, "", False, 1, 2, None, ""),
    (S, "PENDING", "", None, "", False, 1, 2, None, ""),
    (S, "RUNNING", "", None, "", False, 1, 2, R, ""),
    (R, "PENDING", "", None, "", False, 1, 2, None, ""),  # a stale poll never moves a record back
    (R, "RUNNING", "", None, "", False, 1, 2, None, ""),
    (R, "SUCCEEDED", "", "SUCCEEDED", "", False, 1, 2, OK, ""),
    (R, "SUCCEEDED", "", None, "", False, 1, 2, FAIL, "the driver exited without writing a successful result.json"),
    (R, "FAILED", "boom", "FAILED", "ValueError: bad", False, 1, 2, FAIL, "ValueError: bad"),
    (R, "FAILED", "boom", None, "OSError: disk", False, 1, 2, FAIL, "OSError: disk"),  # verdict from the log tail
    (R, "FAILED", "boom", None, "", False, 1, 2, Q, LOST),
    (R, None, "", None, "", False, 2, 2, Q, "driver lost (no verdict written); resubmitted (2/2 restarts used)"),
    (R, "FAILED", "boom", None, "", False, 3, 2, FAIL, "boom"),  # restart budget spent
    (R, None, "", None, "", False, 3, 2, FAIL, "lost by Ray (was the cluster restarted?)"),
    (R, "FAILED", "boom", None, "", True, 1, 2, FAIL, "boom"),  # cancel asked: never resubmitted
    (R, "STOPPED", "", None, "", True, 1, 2, CANCEL, "cancelled by user"),
    (R, "STOPPED", "stopped", None, "", False, 1, 2, Q, "driver lost (stopped); resubmitted (1/2 restarts used)"),
    (R, "FAILED", "boom", "SUCCEEDED", "", False, 1, 2, FAIL, "boom"),
]


@pytest.mark.parametrize("state,ray,msg,verdict,reason,cancel,subs,restarts,target,message", JOBS)
def test_job_decisions(state, ray, msg, verdict, reason, cancel, subs, restarts, target, message):
    obs = Observation(id="j", kind="job", state=state, ray_status=ray, ray_message=msg, verdict=verdict,
                      verdict_reason=reason, cancel_requested=cancel, submissions=subs, max_restarts=restarts)
    decision = decide(obs)
    assert (decision.target, decision.message) == (target, message)
    assert decision.resubmit == (target == Q)


CAMPAIGNS = [
    (S, "RUNNING", "", None, "", False, R, ""),
    (R, "SUCCEEDED", "", "SUCCEEDED", "", False, OK, ""),
    (R, "SUCCEEDED", "", "SUCCEEDED", "step budget reached", False, OK, "step budget reached"),
    (R, "SUCCEEDED", "", "RUNNING", "", False, FAIL,
     "the campaign driver exited without a successful campaign.json. Continue it with: orch resume c"),
    (R, "FAILED", "x", "FAILED", "Tune broke", False, FAIL, "Tune broke. Continue it with: orch resume c"),
    (R, "FAILED", "x", "INTERRUPTED", "Tune stopped", False, FAIL, "Tune stopped. Continue it with: orch resume c"),
    (R, None, "gone", "RUNNING", "", False, FAIL, "campaign driver lost (gone). Continue it with: orch resume c"),
    (R, "STOPPED", "", "RUNNING", "", True, CANCEL, "cancelled by user; continue it with: orch resume c"),
]


@pytest.mark.parametrize("state,ray,msg,verdict,reason,cancel,target,message", CAMPAIGNS)
def test_campaign_decisions_never_resubmit(state, ray, msg, verdict, reason, cancel, target, message):
    obs = Observation(id="c", kind="campaign", state=state, ray_status=ray, ray_message=msg, verdict=verdict,
                      verdict_reason=reason, cancel_requested=cancel, submissions=1, max_restarts=5)
    assert (decide(obs).target, decide(obs).message) == (target, message)


REBUILT = [
    ("RUNNING", "", "SUCCEEDED", "", OK, ""),
    (None, "", "FAILED", "ValueError: x", FAIL, "ValueError: x"),
    ("PENDING", "", None, "", S, ""),
    ("RUNNING", "", None, "", R, ""),
    ("STOPPED", "", None, "", CANCEL, "stopped (found by orch sync)"),
    ("SUCCEEDED", "", None, "", FAIL, "no result.json; Ray says the job ended SUCCEEDED"),
    ("FAILED", "oom", None, "", FAIL, "no result.json; Ray says the job ended FAILED: oom"),
]


@pytest.mark.parametrize("ray,msg,verdict,reason,target,message", REBUILT)
def test_sync_rebuilds_a_state_and_never_resubmits(ray, msg, verdict, reason, target, message):
    obs = Observation(id="j", kind="job", state=None, ray_status=ray, ray_message=msg, verdict=verdict,
                      verdict_reason=reason, submissions=1, max_restarts=3)
    assert (decide(obs).target, decide(obs).message) == (target, message)


def test_sync_of_a_run_ray_never_knew_is_lost_and_resumable():
    decision = decide(Observation(id="j", kind="job", state=None, ray_status=None))
    assert decision.target == FAIL and decision.message.startswith("lost: no result.json")
    assert "orch resume" in decision.message


@pytest.mark.parametrize("state", [OK, FAIL, CANCEL])
def test_an_ended_record_stays_ended(state):
    assert decide(Observation(id="j", kind="job", state=state, ray_status="RUNNING")).target is None


@pytest.mark.parametrize("kind", ["job", "campaign"])
def test_a_cluster_stopped_on_purpose_cancels_and_never_resubmits(kind):
    obs = Observation(id="j", kind=kind, state=R, ray_status=CLUSTER_STOPPED, submissions=1, max_restarts=3)
    assert (decide(obs).target, decide(obs).message) == (CANCEL, "cluster stopped")
