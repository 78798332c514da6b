import pytest

from orchestrator.core.states import ALLOWED_TRANSITIONS, InvalidTransition, JobState, check_transition

HAPPY_PATH = [JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED]


def test_happy_path_is_allowed():
    for current, target in zip(HAPPY_PATH, HAPPY_PATH[1:], strict=False):
        check_transition(current, target)


@pytest.mark.parametrize("target", list(JobState))
def test_succeeded_is_final(target):
    with pytest.raises(InvalidTransition):
        check_transition(JobState.SUCCEEDED, target)


@pytest.mark.parametrize("current,target", [
    (JobState.QUEUED, JobState.RUNNING), (JobState.QUEUED, JobState.SUCCEEDED), (JobState.RUNNING, JobState.STARTING),
    (JobState.FAILED, JobState.RUNNING), (JobState.CANCELLED, JobState.SUCCEEDED),
])
def test_impossible_moves_are_refused(current, target):
    with pytest.raises(InvalidTransition, match=f"from {current.value} to {target.value}"):
        check_transition(current, target)


def test_only_failed_or_cancelled_can_be_requeued_by_resume_and_active_by_driver_loss():
    requeuable = {s for s, targets in ALLOWED_TRANSITIONS.items() if JobState.QUEUED in targets}
    assert requeuable == {JobState.FAILED, JobState.CANCELLED, JobState.STARTING, JobState.RUNNING}
    assert {s for s in JobState if s.terminal} == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
