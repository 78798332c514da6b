"""The failure reason a driver records: the innermost error, and for a worker that died, which one."""

from __future__ import annotations

from orchestrator.core.run import root_cause


class HealthCheckFailed(Exception):
    """Shaped like Ray Train's WorkerHealthCheckFailedError: the dead actor's error is kept beside it."""

    def __init__(self, failure: Exception) -> None:
        super().__init__("Worker health check failed")
        self.health_check_failure = failure


class WorkerGroupFailed(Exception):
    """Shaped like Ray Train's WorkerGroupError."""

    def __init__(self, failures: dict[int, Exception]) -> None:
        super().__init__("Training failed due to worker errors:\n[Rank 1]\nsome text")
        self.worker_failures = failures


def test_a_dead_worker_is_named_by_its_rank():
    died = RuntimeError("The actor died unexpectedly before finishing this task.\n\tpid: 4242")
    reason = root_cause(WorkerGroupFailed({0: ConnectionError("peer closed"), 1: HealthCheckFailed(died)}))
    assert reason == "worker rank 1 died (RuntimeError: The actor died unexpectedly before finishing this task.)"


def test_a_raising_worker_gives_its_own_error():
    try:
        try:
            raise ValueError("boom")
        except ValueError as inner:
            raise WorkerGroupFailed({0: inner}) from inner
    except WorkerGroupFailed as exc:
        assert root_cause(exc) == "ValueError: boom"
