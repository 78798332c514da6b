"""Idle stop of the embedded cluster: its settings and the decision, as pure functions.

An embedded cluster left running after the last job holds its CPUs and memory for nothing (several
ORCH_HOMEs each leaving one behind slow the whole machine), so it stops itself after `idle_stop_s` with
nothing queued or running; 0 keeps it. The background scheduler watches and acts (orchestrator/scheduler.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from orchestrator.core.errors import OrchError

DEFAULT_IDLE_STOP_S = 15 * 60.0
IDLE_STOP_ENV = "ORCH_IDLE_STOP_S"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> float:
    """'900', '90s', '15m', '1.5h', '2d' -> seconds. `what` names the option in the error."""
    match = _DURATION.match(str(text))
    if not match:
        raise OrchError(f"{what}: '{text}' is not a duration. Give seconds (900) or a number with a unit: "
                        "90s, 15m, 2h, 1d (0 turns idle stop off).")
    return float(match.group(1)) * _UNIT_S[(match.group(2) or "s").lower()]


def default_idle_stop_s() -> float:
    """ORCH_IDLE_STOP_S (a duration; 0 = never), else 15 minutes."""
    value = os.environ.get(IDLE_STOP_ENV)
    return DEFAULT_IDLE_STOP_S if not value else parse_duration(value, IDLE_STOP_ENV)


@dataclass(frozen=True)
class IdleDecision:
    stop: bool
    stop_at: float | None  # Unix time it stops if it stays idle; None when idle stop is off or it is busy


def idle_decision(now: float, last_active: float, idle_stop_s: float, busy: bool) -> IdleDecision:
    """Stop once nothing has run for idle_stop_s. Busy (a job or campaign queued or running) never stops."""
    if idle_stop_s <= 0 or busy:
        return IdleDecision(stop=False, stop_at=None)
    stop_at = last_active + idle_stop_s
    return IdleDecision(stop=now >= stop_at, stop_at=stop_at)


def describe_duration(seconds: float) -> str:
    """900 -> '15m', 90 -> '1m30s', 3600 -> '1h'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or "0s"
