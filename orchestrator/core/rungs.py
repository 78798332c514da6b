"""Where a campaign's scheduler judges trials, in training steps: trials wait there for its decision.

ASHA compares trials at its rungs. A trial is judged at its first report at or past a rung that carries the metric,
so that is where its workers wait (orchestrator.runtime.decision_gate) until Tune has decided. Hyperband runs as
asynchronous Hyperband: ASHA over several brackets, whose rungs are a subset of the first bracket's. PBT decides
elsewhere and is not gated.
"""

from __future__ import annotations

import math

from orchestrator.core.campaign_spec import Campaign
from orchestrator.core.spec import JobSpec


def rung_steps(campaign: Campaign) -> list[float]:
    """ASHA's rungs over all brackets (grace_period x reduction_factor^k), below the longest trial."""
    sched = campaign.spec.scheduler
    if sched.type not in ("asha", "hyperband"):
        return []
    rungs, milestone = [], float(sched.grace_period)
    while milestone < campaign.max_t:
        rungs.append(milestone)
        milestone *= sched.reduction_factor
    return rungs


def hyperband_brackets(grace_period: int, reduction_factor: float, max_t: int) -> int:
    """Hyperband's bracket count, s_max + 1, with `grace_period` as the smallest budget: bracket s first judges
    trials at grace_period x reduction_factor^s steps."""
    return max(1, math.floor(math.log(max_t / grace_period) / math.log(reduction_factor) + 1e-9) + 1)


def decision_steps(job: JobSpec, rungs: list[float], metric: str) -> list[int]:
    """For each rung, the first step at or past it whose report carries `metric`, before the trial's last step.

    Workers report every train.report_every steps and at every eval; eval_* metrics come only with evals."""
    train = job.train

    def carries_metric(step: int) -> bool:
        evaluated = train.eval_every > 0 and step % train.eval_every == 0
        return evaluated if metric.startswith("eval_") else evaluated or step % train.report_every == 0

    steps = set()
    for rung in rungs:
        step = math.ceil(rung)
        while step < train.steps and not carries_metric(step):
            step += 1
        if step < train.steps:
            steps.add(step)
    return sorted(steps)
