"""A campaign spec as Ray Tune objects: domains, searchers, schedulers and the step-budget stopper."""

from __future__ import annotations

import json

import pytest
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

from orchestrator.core.campaign_spec import ParamSpec, resolve_campaign
from orchestrator.runtime.campaign import tuning
from orchestrator.storage import LocalStore
from tests.paths import EXAMPLES

EXAMPLES = EXAMPLES


def make(**fields):
    data = {
        "name": "t", "base": "mlp-digits.yaml", "metric": "eval_accuracy", "mode": "max",
        "overrides": {"train.steps": 60, "train.eval_every": 20, "checkpoint.every_steps": 20},
        "search_space": {"train.l2": {"type": "uniform", "low": 0.0, "high": 1e-3}},
    }
    data.update(fields)
    return resolve_campaign(data, base_dir=EXAMPLES)


def test_each_param_type_becomes_its_tune_domain():
    choice = tuning.to_tune(ParamSpec(type="choice", values=[[32], [64, 32]]))
    assert isinstance(choice, Categorical) and choice.categories == [[32], [64, 32]]
    uniform = tuning.to_tune(ParamSpec(type="uniform", low=0, high=2))
    assert isinstance(uniform, Float) and (uniform.lower, uniform.upper) == (0.0, 2.0)
    log = tuning.to_tune(ParamSpec(type="loguniform", low=1e-4, high=1e-1))
    assert isinstance(log.get_sampler(), LogUniform) and (log.lower, log.upper) == (1e-4, 1e-1)
    integer = tuning.to_tune(ParamSpec(type="randint", low=2, high=9))
    assert isinstance(integer, Integer) and (integer.lower, integer.upper) == (2, 9)
    assert tuning.to_tune(ParamSpec(type="grid", values=[1, 2])) == tune.grid_search([1, 2])
    # Under the grid algorithm a choice is enumerated too.
    assert tuning.to_tune(ParamSpec(type="choice", values=["a", "b"]), as_grid=True) == tune.grid_search(["a", "b"])


def test_param_space_is_flat_with_dotted_keys_and_samples_inside_the_ranges():
    campaign = make(search_space={"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
                                  "model.hidden_sizes": {"type": "choice", "values": [[8], [16, 8]]}})
    space = tuning.param_space(campaign.spec)
    assert set(space) == {"train.lr", "model.hidden_sizes"}
    for _ in range(20):
        assert 1e-4 <= space["train.lr"].sample() <= 1e-1
        assert space["model.hidden_sizes"].sample() in ([8], [16, 8])


def test_random_search_is_seeded_and_limited_to_the_concurrency():
    campaign = make(search={"algorithm": "random", "seed": 3})
    searcher = tuning.search_algorithm(campaign.spec, concurrency=2)
    assert isinstance(searcher, BasicVariantGenerator) and searcher.max_concurrent == 2


def test_optuna_is_seeded_tpe_behind_a_concurrency_limiter():
    campaign = make(search={"algorithm": "optuna", "seed": 5})
    searcher = tuning.search_algorithm(campaign.spec, concurrency=3)
    assert isinstance(searcher, ConcurrencyLimiter) and searcher.max_concurrent == 3
    assert isinstance(searcher.searcher, OptunaSearch)
    assert searcher.searcher._seed == 5


def test_optuna_passes_over_reports_without_the_metric():
    campaign = make(search={"algorithm": "optuna", "seed": 5})
    searcher = tuning.search_algorithm(campaign.spec, concurrency=1).searcher
    searcher.set_search_properties("eval_accuracy", "max", tuning.param_space(campaign.spec))
    config = searcher.suggest("t1")
    assert 0.0 <= config["train.l2"] <= 1e-3
    searcher.on_trial_result("t1", {"step": 10, "loss": 1.0, "training_iteration": 1})  # no eval metric: skipped
    searcher.on_trial_result("t1", {"step": 20, "eval_accuracy": 0.5, "training_iteration": 2})
    searcher.on_trial_complete("t1", {"step": 20, "eval_accuracy": 0.5})
    assert [t.value for t in searcher._ot_study.trials] == [0.5]


def test_schedulers_count_time_in_training_steps():
    asha = tuning.scheduler(make(scheduler={"type": "asha", "grace_period": 20, "reduction_factor": 2}), 20)
    assert isinstance(asha, AsyncHyperBandScheduler)
    assert asha._time_attr == "step" and asha._max_t == 60
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [40, 20]
    # Survivors of every rung finish by themselves (final eval, checkpoint, result.json).
    assert asha._brackets[0]._stop_last_trials is False
    # Hyperband runs asynchronously (no pauses): one ASHA bracket per Hyperband bracket, s = 0, 1, 2 for 60/5 steps.
    hyperband = tuning.scheduler(make(scheduler={"type": "hyperband", "max_t": 60, "grace_period": 5}), 20)
    assert isinstance(hyperband, AsyncHyperBandScheduler) and hyperband._time_attr == "step"
    assert [[m for m, _ in b._rungs] for b in hyperband._brackets] == [[45, 15, 5], [45, 15], [45]]
    assert all(b._stop_last_trials is False for b in hyperband._brackets)
    # A rung at the last step would judge trials that trained every step: there is none.
    exact = tuning.scheduler(make(scheduler={"type": "hyperband", "max_t": 30, "grace_period": 10}), 20)
    assert [[m for m, _ in b._rungs] for b in exact._brackets] == [[10], []]
    asha = tuning.scheduler(make(scheduler={"type": "asha", "max_t": 270, "grace_period": 10}), 20)
    assert [m for m, _ in asha._brackets[0]._rungs] == [90, 30, 10]
    assert isinstance(tuning.scheduler(make(), 20), FIFOScheduler)


def test_pbt_mutates_the_search_space_at_the_checkpoint_interval():
    pbt = tuning.scheduler(make(scheduler={"type": "pbt"}), checkpoint_every=20)
    assert isinstance(pbt, PopulationBasedTraining)
    assert pbt._perturbation_interval == 20 and pbt._time_attr == "step"
    assert set(pbt._hyperparam_mutations) == {"train.l2"}
    assert pbt._require_attrs is False  # reports between eval steps carry no eval metric


def test_pbt_saves_tunes_experiment_state_the_moment_it_exploits(monkeypatch):
    # A driver that dies after the clone must come back with the trial's mutated config, not the one before.
    calls = []
    monkeypatch.setattr(PopulationBasedTraining, "_exploit", lambda self, controller, trial, donor:
                        calls.append(("exploit", trial, donor)))

    class Controller:
        def checkpoint(self, force: bool = False, wait: bool = False) -> None:
            calls.append(("save", force, wait))

    pbt = tuning.scheduler(make(scheduler={"type": "pbt"}), checkpoint_every=20)
    pbt._exploit(Controller(), "trial", "donor")
    assert calls == [("exploit", "trial", "donor"), ("save", True, True)]


@pytest.fixture
def trials_store(tmp_path):
    store = LocalStore(tmp_path)
    for trial, steps in (("a_00000", [1, 10, 20]), ("a_00001", [1, 10])):
        store.put_bytes(f"{trial}/metrics.jsonl", "".join(json.dumps({"step": s}) + "\n" for s in steps).encode())
    store.put_bytes("a_00002/spec.yaml", b"name: x\n")  # not started: no metrics
    return store


def test_step_budget_counts_steps_already_in_storage(trials_store):
    assert tuning.steps_in_storage(trials_store) == {"a_00000": 20, "a_00001": 10}
    stopper = tuning.stopper(make(budget={"total_steps": 45}).spec, trials_store)
    assert not stopper("a_00001", {"step": 12}) and not stopper.stop_all()  # 20 + 12
    stopper("a_00002", {"step": 12})
    assert not stopper.stop_all()  # 20 + 12 + 12 = 44
    assert stopper("a_00002", {"step": 13})  # the report that spends the budget stops its own trial at once
    assert stopper.stop_all()
    assert tuning.stopper(make().spec, trials_store) is None


@pytest.mark.parametrize(("resources", "bundle", "max_failures"), [
    # The trial process is the worker: it holds the worker's CPUs, and Tune restarts it as Ray Train would.
    ({"num_workers": 1, "cpus_per_worker": 2}, {"CPU": 2.0}, 3),
    # The trial only drives a worker group, whose workers hold the CPUs and restart under Ray Train.
    ({"num_workers": 2, "cpus_per_worker": 1}, {"memory": float(256 * 1024**2)}, 0),
])
def test_the_tuner_asks_for_the_trial_process_resources_by_how_trials_start(tmp_path, resources, bundle, max_failures):
    from orchestrator.runtime.campaign.driver import build_tuner

    campaign = make(trial_resources=resources, overrides={"train.steps": 60, "train.eval_every": 20,
                                                          "failure.max_restarts": 3})
    tuner, resumed = build_tuner("c1", campaign, LocalStore(tmp_path / "c1"), concurrency=1)
    local = tuner._local_tuner
    assert not resumed
    assert local._trainable._resources.bundles == [bundle]
    assert local._run_config.failure_config.max_failures == max_failures
    assert local._tune_config.reuse_actors is (max_failures > 0)  # a trial's own process goes on to the next trial
