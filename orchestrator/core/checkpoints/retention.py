"""Retention: which committed checkpoints to keep (latest K, best K), and deleting the rest manifest-first."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

from orchestrator.core.checkpoints.catalog import CheckpointInfo, list_checkpoints
from orchestrator.core.checkpoints.protocol import manifest_key, step_prefix
from orchestrator.storage import ObjectStore

log = logging.getLogger(__name__)


def plan_retention(
    checkpoints: Sequence[CheckpointInfo],
    keep_latest: int,
    keep_best: int = 0,
    metric: str | None = None,
    mode: Literal["min", "max"] = "min",
) -> list[int]:
    """Steps to delete, ascending. Pure: decides from the listing alone.

    Kept: the `keep_latest` newest committed checkpoints (0 keeps every committed one), the `keep_best`
    committed ones by `metric` (ties go to the newer step; checkpoints without a finite numeric value
    for it never rank), and always the newest committed checkpoint. Uncommitted step directories older
    than the newest committed one are garbage (failed or interrupted saves, interrupted deletions);
    newer ones may be saves in progress and are left alone.
    """
    if keep_latest < 0 or keep_best < 0:
        raise ValueError("keep_latest and keep_best must be >= 0")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if keep_best and not metric:
        raise ValueError("keep_best needs the metric to rank checkpoints by")
    committed = sorted((c for c in checkpoints if c.committed), key=lambda c: c.step)
    if not committed:
        return []
    newest = committed[-1].step
    if keep_latest == 0:
        keep = {c.step for c in committed}
    else:
        keep = {c.step for c in committed[-keep_latest:]}
    if keep_best:
        sign = 1 if mode == "min" else -1
        ranked = sorted(
            (c for c in committed if _finite_number(c.metrics.get(metric or ""))),
            key=lambda c: (sign * c.metrics[metric or ""], -c.step),
        )
        keep.update(c.step for c in ranked[:keep_best])
    return sorted(
        c.step for c in checkpoints
        if (c.committed and c.step not in keep) or (not c.committed and c.step < newest)
    )


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def apply_retention(
    store: ObjectStore,
    *,
    keep_latest: int,
    keep_best: int = 0,
    metric: str | None = None,
    mode: Literal["min", "max"] = "min",
) -> list[int]:
    """Delete what plan_retention says; returns the deleted steps. Safe to re-run after an interruption.

    Run it where no save of an *older* step can be in progress (the committer does it right after a
    commit): an uncommitted directory older than the newest committed checkpoint is deleted as garbage.
    """
    steps = plan_retention(list_checkpoints(store), keep_latest, keep_best, metric, mode)
    for step in steps:
        # The manifest goes first: from then on the step is uncommitted, so a deletion cut short here
        # can never be mistaken for a usable checkpoint, and the next run deletes the rest.
        store.delete(manifest_key(step))
        store.delete_prefix(step_prefix(step))
    if steps:
        log.info("Retention deleted checkpoint step(s) %s in %s", ", ".join(map(str, steps)), store.uri)
    return steps
