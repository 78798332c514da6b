"""Bounded retries with exponential backoff and jitter for storage calls.

botocore's own retries are kept low (see s3.py) so that this is the one place that decides how long we
keep trying, and every retry is logged the same way whatever the backend.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

from orchestrator.storage.base import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIES_ENV = "ORCH_STORAGE_RETRIES"
DEFAULT_RETRIES = 5
BASE_DELAY_S = 0.2
MAX_DELAY_S = 20.0


def configured_retries() -> int:
    """How many times a retryable failure is retried after the first attempt (ORCH_STORAGE_RETRIES)."""
    raw = os.environ.get(RETRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRIES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise StorageError(f"{RETRIES_ENV}={raw!r} is not a valid retry count. Set it to a number >= 0.")
    return value


def backoff_delay(retry: int, base_delay: float = BASE_DELAY_S) -> float:
    """Delay before retry number `retry` (0-based): exponential, capped, with 'equal jitter'.

    Half the delay is fixed so that retries really back off, half is random so that many workers hitting
    the same throttled bucket spread out instead of retrying in lockstep.
    """
    delay = min(MAX_DELAY_S, base_delay * (2**retry))
    return delay / 2 + random.uniform(0, delay / 2)


def with_retries(
    operation: Callable[[], T],
    to_storage_error: Callable[[Exception], StorageError | None],
    *,
    what: str,
    retries: int | None = None,
    base_delay: float = BASE_DELAY_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `operation`, retrying failures that `to_storage_error` maps to a retryable StorageError.

    `to_storage_error` returns None for exceptions it does not recognise; those propagate unchanged
    (they are bugs or local problems, not storage weather). Non-retryable errors are raised at once;
    retryable ones are raised after `retries` retries (default: ORCH_STORAGE_RETRIES) with the attempt
    count in the message. `what` names the operation in logs, e.g. "get 'ckpt/MANIFEST.json'".
    """
    if retries is None:
        retries = configured_retries()
    attempt = 0
    while True:
        try:
            return operation()
        except Exception as exc:  # classified right below; unrecognised ones are re-raised as they are
            error = to_storage_error(exc)
            if error is None or (error is exc and not error.retryable):
                raise
            if not error.retryable:
                raise error from exc
            if attempt >= retries:
                raise StorageError(
                    f"{error} (gave up after {attempt + 1} attempts; {RETRIES_ENV} sets how many retries)",
                    retryable=True,
                ) from exc
            delay = backoff_delay(attempt, base_delay)
            log.warning("%s failed, retrying in %.1f s (attempt %d of %d): %s",
                        what, delay, attempt + 1, retries + 1, error)
            sleep(delay)
            attempt += 1
