"""The one retry helper: bounded exponential backoff with jitter, only for retryable failures."""

from __future__ import annotations

import pytest

from orchestrator.storage import StorageError
from orchestrator.storage.retry import backoff_delay, configured_retries, with_retries


class Flaky:
    """Fails `failures` times with `error`, then returns "done"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


class Transient(Exception):
    pass


def classify(exc: Exception) -> StorageError | None:
    if isinstance(exc, Transient):
        return StorageError("Storage s3://b: the server answered SlowDown.", retryable=True)
    if isinstance(exc, PermissionError):
        return StorageError("Storage s3://b: access denied.")
    return None


def run(operation: Flaky, sleeps: list[float], retries: int | None = 3) -> str:
    return with_retries(operation, classify, what="test op", retries=retries, sleep=sleeps.append)


def test_retryable_failures_are_retried_until_success() -> None:
    sleeps: list[float] = []
    operation = Flaky(2, Transient())
    assert run(operation, sleeps) == "done"
    assert operation.calls == 3
    assert len(sleeps) == 2


def test_gives_up_after_the_configured_retries() -> None:
    sleeps: list[float] = []
    operation = Flaky(100, Transient())
    with pytest.raises(StorageError) as info:
        run(operation, sleeps, retries=3)
    assert operation.calls == 4  # the first attempt + 3 retries
    assert len(sleeps) == 3
    assert info.value.retryable
    assert "SlowDown" in str(info.value) and "gave up after 4 attempts" in str(info.value)
    assert isinstance(info.value.__cause__, Transient)


def test_backoff_grows_exponentially_with_jitter() -> None:
    sleeps: list[float] = []
    with pytest.raises(StorageError):
        run(Flaky(100, Transient()), sleeps, retries=4)
    for retry, delay in enumerate(sleeps):
        nominal = 0.2 * 2**retry
        assert nominal / 2 <= delay <= nominal
    assert backoff_delay(50) <= 20.0  # capped
    assert len({backoff_delay(3) for _ in range(20)}) > 1  # jittered


def test_non_retryable_failures_are_raised_at_once() -> None:
    sleeps: list[float] = []
    operation = Flaky(1, PermissionError("denied"))
    with pytest.raises(StorageError, match="access denied") as info:
        run(operation, sleeps)
    assert operation.calls == 1 and sleeps == []
    assert not info.value.retryable


def test_unrecognised_errors_propagate_unchanged() -> None:
    operation = Flaky(1, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        run(operation, [])
    assert operation.calls == 1


def test_retry_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_STORAGE_RETRIES", raising=False)
    assert configured_retries() == 5
    monkeypatch.setenv("ORCH_STORAGE_RETRIES", "1")
    operation = Flaky(100, Transient())
    with pytest.raises(StorageError):
        run(operation, [], retries=None)
    assert operation.calls == 2
    for bad in ("-1", "many"):
        monkeypatch.setenv("ORCH_STORAGE_RETRIES", bad)
        with pytest.raises(StorageError, match="ORCH_STORAGE_RETRIES"):
            configured_retries()
