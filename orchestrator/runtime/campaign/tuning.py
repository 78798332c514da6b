"""A validated campaign as Ray Tune objects: search space, search algorithm, scheduler, stopper.

Imported only by the campaign driver inside the cluster (and by tests), never by the CLI: importing Ray
Tune takes seconds. Every scheduler measures time in training steps: the `step` each
report carries (a trial resumed from a checkpoint continues its count, unlike `training_iteration`).
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from orchestrator.core.campaign_spec import Campaign, CampaignSpec, ParamSpec
from orchestrator.core.metrics_log import METRICS_KEY, read_jsonl
from orchestrator.core.rungs import hyperband_brackets
from orchestrator.storage import ObjectStore

TIME_ATTR = "step"


def to_tune(param: ParamSpec, as_grid: bool = False) -> Any:
    """One search-space entry as a Tune domain; choice becomes a grid under the grid algorithm."""
    if param.type == "grid" or (as_grid and param.type == "choice"):
        return tune.grid_search(list(param.values or ()))
    if param.type == "choice":
        return tune.choice(list(param.values or ()))
    if param.type == "uniform":
        return tune.uniform(float(param.low), float(param.high))
    if param.type == "loguniform":
        return tune.loguniform(float(param.low), float(param.high))
    return tune.randint(int(param.low), int(param.high))


def param_space(spec: CampaignSpec) -> dict[str, Any]:
    """Flat {dotted.key: domain}: trial configs keep the job spec's own paths as their keys."""
    as_grid = spec.search.algorithm == "grid"
    return {key: to_tune(param, as_grid) for key, param in spec.search_space.items()}


def search_algorithm(spec: CampaignSpec, concurrency: int) -> Any:
    """The searcher, limited to `concurrency` trials at a time (Tune's max_concurrent_trials only applies
    to Searchers such as Optuna; the basic variant generator takes the limit itself)."""
    if spec.search.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter

        # TPE with a fixed seed: the same campaign proposes the same sequence of configs.
        return ConcurrencyLimiter(EvalAwareOptunaSearch(seed=spec.search.seed), max_concurrent=concurrency)
    return BasicVariantGenerator(random_state=spec.search.seed, max_concurrent=concurrency)


class EvalAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that passes over reports without the metric: eval metrics only come with eval steps."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


def scheduler(campaign: Campaign, checkpoint_every: int) -> Any:
    sched = campaign.spec.scheduler
    # stop_last_trials=False: a trial that survives every rung ends by itself (final eval, final checkpoint,
    # result.json) instead of being stopped by the scheduler at its very last report.
    if sched.type == "asha":
        return _no_rung_at_the_end(ASHAScheduler(
            time_attr=TIME_ATTR, max_t=campaign.max_t, grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor, brackets=sched.brackets, stop_last_trials=False))
    if sched.type == "hyperband":
        # Hyperband without pauses: Ray's asynchronous Hyperband (ASHA over every Hyperband bracket, each trial
        # drawn into one). Tune's synchronous HyperBandScheduler pauses trials at any report until their bracket
        # catches up, and judges the report it paused at: a step-1 report carries no eval metric, and each pause
        # would cost one of our trials a new worker group, started again from its last checkpoint.
        return _no_rung_at_the_end(ASHAScheduler(
            time_attr=TIME_ATTR, max_t=campaign.max_t, grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
            brackets=hyperband_brackets(sched.grace_period, sched.reduction_factor, campaign.max_t),
            stop_last_trials=False))
    if sched.type == "pbt":
        space = campaign.spec.search_space
        return DurablePopulationBasedTraining(
            time_attr=TIME_ATTR,
            perturbation_interval=sched.perturbation_interval or checkpoint_every,
            hyperparam_mutations={key: to_tune(space[key]) for key in campaign.spec.pbt_mutations()},
            quantile_fraction=sched.quantile_fraction,
            resample_probability=sched.resample_probability,
            # Eval metrics come only with eval steps; PBT decides at the reports that carry the metric.
            require_attrs=False,
        )
    return FIFOScheduler()


class DurablePopulationBasedTraining(PopulationBasedTraining):
    """PBT whose exploits survive a driver restart: Tune's experiment state is saved the moment a trial is given
    another trial's checkpoint and a mutated config, not at the next periodic save. A trial clones the donor's
    checkpoint into its store as it restarts (within a second when it trains in its own process); a driver that died
    before the periodic save came back with the trial's old config over the donor's weights."""

    def _exploit(self, tune_controller: Any, trial: Any, trial_to_clone: Any) -> None:
        super()._exploit(tune_controller, trial, trial_to_clone)
        tune_controller.checkpoint(force=True, wait=True)


def _no_rung_at_the_end(asha: ASHAScheduler) -> ASHAScheduler:
    """Drop a rung at max_t (grace_period x reduction_factor^k == max_t exactly). Judged at its last report, a
    trial that trained every step could be stopped there: nothing saved, and the trial shown as stopped early."""
    for bracket in asha._brackets:
        bracket._rungs = [(milestone, seen) for milestone, seen in bracket._rungs if milestone < asha._max_t]
    return asha


class StepBudgetStopper(Stopper):
    """Stops the whole campaign once its trials together have trained `total_steps` steps.

    Steps are counted per trial as the highest step it reported; on a resumed campaign the counts start
    from the trials' metrics in storage, so steps spent before the restart still count.
    """

    def __init__(self, total_steps: int, trials_store: ObjectStore):
        self.total_steps = total_steps
        self.trials_store = trials_store
        self.steps: dict[str, int] | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.steps is None:
            self.steps = steps_in_storage(self.trials_store)
        self.steps[trial_id] = max(self.steps.get(trial_id, 0), int(result.get(TIME_ATTR, 0)))
        # The report that spends the budget stops its own trial here: Tune asks stop_all() only after the trial
        # has been told to go on, so that trial would otherwise train one more report interval.
        return self.stop_all()

    def stop_all(self) -> bool:
        return self.steps is not None and sum(self.steps.values()) >= self.total_steps


def steps_in_storage(trials_store: ObjectStore) -> dict[str, int]:
    """{trial id: highest step in its metrics.jsonl} for every trial that has reported."""
    steps: dict[str, int] = {}
    for info in trials_store.list():
        trial_id, _, name = info.key.partition("/")
        if name != METRICS_KEY:
            continue
        steps[trial_id] = max((row.get("step", 0) for row in read_jsonl(trials_store, info.key)), default=0)
    return steps


def stopper(spec: CampaignSpec, trials_store: ObjectStore) -> StepBudgetStopper | None:
    return None if spec.budget.total_steps is None else StepBudgetStopper(spec.budget.total_steps, trials_store)
