"""Retrying the Ray Jobs API through transient errors, for a bounded time.

A head that has just started answers `500: No available agent to submit job, please try again later` until
its job agent registers; a dashboard being restarted, a proxy in between or a busy head answer 5xx or drop the
connection for a moment. None of that says anything about the job, so each call is retried with exponential
backoff for up to ORCH_RAY_RETRY_S seconds (default 60) and only then counts as a failure, and the user is
told once per call what `orch` waits for.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from orchestrator.control.cluster_address import ClusterUnavailable
from orchestrator.core.errors import OrchError

T = TypeVar("T")

DEFAULT_RETRY_S = 60.0
_HTTP_5XX = re.compile(r"status code (5\d\d)")


class RayTransientError(ClusterUnavailable):
    """Ray kept answering with a transient error for the whole retry budget; the job's state is unchanged."""


def retry_budget_s() -> float:
    """ORCH_RAY_RETRY_S: how long one Ray Jobs API call keeps retrying transient errors (0: no retry)."""
    raw = os.environ.get("ORCH_RAY_RETRY_S", "")
    if not raw:
        return DEFAULT_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        raise OrchError(f"ORCH_RAY_RETRY_S={raw!r} is not a number of seconds. Set it to e.g. 60, or unset "
                        "it for the default.") from None
    if value < 0:
        raise OrchError(f"ORCH_RAY_RETRY_S={raw!r} is negative. Set it to 0 (no retry) or more seconds.")
    return value


def transient_reason(exc: BaseException) -> str | None:
    """What a transient failure looks like in words ("answered HTTP 503"), or None when it is not transient."""
    text = str(exc)
    if "try again later" in text:
        return "Ray answered 'try again later'"
    if isinstance(exc, RuntimeError):
        match = _HTTP_5XX.search(text)
        return f"Ray answered HTTP {match.group(1)}" if match else None
    if isinstance(exc, ClusterUnavailable):  # our wrapper around a refused or dropped connection
        return "the Ray Jobs API could not be reached" if getattr(exc, "transient", True) else None
    status = getattr(getattr(exc, "response", None), "status_code", None)  # requests' HTTPError
    if isinstance(status, int):
        return f"Ray answered HTTP {status}" if status >= 500 else None
    # requests' ConnectionError/Timeout and aiohttp's connector errors are OSError subclasses; asyncio's and
    # the socket's timeouts are TimeoutError (itself an OSError).
    if isinstance(exc, OSError):
        return "the Ray Jobs API could not be reached" if not isinstance(exc, TimeoutError) else \
            "the Ray Jobs API timed out"
    for cls in type(exc).__mro__:  # aiohttp errors that are not OSErrors (server disconnected, 5xx handshake)
        if cls.__module__.startswith("aiohttp") and cls.__name__ in ("ClientConnectionError", "ServerTimeoutError"):
            return "the Ray Jobs API could not be reached"
        if cls.__module__.startswith("aiohttp") and cls.__name__ == "WSServerHandshakeError":
            status = getattr(exc, "status", 0)
            return f"Ray answered HTTP {status}" if 500 <= status < 600 else None
    return None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def call_with_retry(call: Callable[[], T], what: str, budget_s: float | None = None,
                    notify: Callable[[str], None] = _say, first_delay_s: float = 0.25,
                    max_delay_s: float = 5.0) -> T:
    """`call()`, retried with exponential backoff while it fails transiently, for up to `budget_s` seconds.

    Anything else it raises goes straight through. After the budget, RayTransientError says what kept failing.
    """
    budget = retry_budget_s() if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    delay = first_delay_s
    told = False
    while True:
        try:
            return call()
        except Exception as exc:
            reason = transient_reason(exc)
            if reason is None:
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise RayTransientError(
                    f"{reason} for {budget:.0f} s while {what} ({_short(exc)}). Nothing about the job changed; "
                    "check that the Ray cluster is up, or raise ORCH_RAY_RETRY_S to wait longer.") from None
            if not told:
                notify(f"{reason}; retrying for up to {budget:.0f} s ({what})")
                told = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, max_delay_s)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
