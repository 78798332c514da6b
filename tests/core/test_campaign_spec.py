"""Campaign specs: validation at submit (errors name the field), overrides, dotted keys, trial specs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from orchestrator.core.campaign_spec import (
    Campaign,
    CampaignSpec,
    ParamSpec,
    apply_campaign_sets,
    load_campaign_file,
    resolve_campaign,
    trial_spec_data,
)
from orchestrator.core.errors import SpecError
from orchestrator.core.spec import REDACTED, parse_spec
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
EXAMPLES = REPO / "jobs" / "examples"


def campaign(**fields: Any) -> dict[str, Any]:
    """A small valid campaign mapping over the mlp example, with `fields` replaced."""
    data: dict[str, Any] = {
        "name": "t",
        "base": str(EXAMPLES / "mlp-digits.yaml"),
        "overrides": {"train.steps": 60, "train.eval_every": 20},
        "search_space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1}},
        "metric": "eval_accuracy",
        "mode": "max",
    }
    data.update(fields)
    return data


def resolve(data: dict[str, Any]) -> Campaign:
    return resolve_campaign(data, base_dir=EXAMPLES, source="c.yaml")


def spec_error(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as err:
        resolve(data)
    return str(err.value)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("tune-*.yaml")))
def test_example_campaigns_are_valid(path):
    loaded = load_campaign_file(path)
    assert loaded.base_job.scaling.num_workers == 1
    if loaded.spec.scheduler.type == "pbt":  # PBT compares trials that run together: the whole population at once
        assert 2 <= loaded.spec.trial_count() <= (loaded.spec.max_concurrent_trials or 0)
    else:
        assert loaded.spec.trial_count() >= 4


@pytest.mark.parametrize(("fields", "launch"), [
    ({"trial_resources": {"num_workers": 1}}, "in_process"),
    ({"trial_resources": {"num_workers": 2}}, "worker_group"),  # ranks need a process each
    ({"trial_resources": {"num_workers": 1, "launch": "worker_group"}}, "worker_group"),  # asked for
    ({"trial_resources": {"num_workers": 1}, "overrides": {"scaling.use_gpu": True, "scaling.gpus_per_worker": 1}},
     "worker_group"),
    # One Tune resource request serves every trial: a search over the scaling keeps the worker group.
    ({"trial_resources": {"num_workers": 1},
      "search_space": {"scaling.cpus_per_worker": {"type": "choice", "values": [1, 2]}}}, "worker_group"),
])
def test_single_cpu_worker_trials_train_in_their_tune_process(fields, launch):
    resolved = resolve(campaign(**fields))
    assert resolved.trial_launch == launch
    assert resolved.trials_in_process is (launch == "in_process")


def test_the_mlp_example_has_at_least_8_asha_trials_of_one_worker():
    loaded = load_campaign_file(EXAMPLES / "tune-mlp-asha.yaml")
    assert loaded.spec.trial_count() >= 8 and loaded.spec.scheduler.type == "asha"
    assert loaded.base_job.workload == "mlp" and loaded.base_job.scaling.cpus_per_worker == 1
    assert loaded.max_t == loaded.base_job.train.steps == 120


def test_base_is_resolved_relative_to_the_campaign_file_and_overrides_apply(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "base.yaml").write_text((EXAMPLES / "mlp-digits.yaml").read_text())
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(campaign(base="jobs/base.yaml", trial_resources={"num_workers": 1})))
    loaded = load_campaign_file(path)
    job = loaded.base_job
    assert (job.name, job.train.steps, job.train.eval_every, job.scaling.num_workers) == ("t", 60, 20, 1)
    assert loaded.base["train"]["lr_schedule"] == "cosine"  # normalised: every default is visible


def test_inline_base_works_and_its_secrets_are_kept_out_of_the_stored_record():
    base = yaml.safe_load((EXAMPLES / "mlp-digits.yaml").read_text())
    base["env"] = {"WANDB_API_KEY": "s3cr3t", "MODE": "mode-fast-7"}
    base["public_env"] = {"LOG_LEVEL": "level-info-7"}
    loaded = resolve(campaign(base=base, overrides={"env.HF_TOKEN": "t0ken", "train.steps": 60}))
    # Every env value is secret, whatever its name; public_env is what may be shown.
    assert loaded.secrets == {"WANDB_API_KEY": "s3cr3t", "HF_TOKEN": "t0ken", "MODE": "mode-fast-7"}
    stored = yaml.safe_dump(loaded.to_record())
    assert "s3cr3t" not in stored and "t0ken" not in stored and "mode-fast-7" not in stored
    assert loaded.base["env"]["MODE"] == REDACTED and loaded.base["public_env"]["LOG_LEVEL"] == "level-info-7"
    assert Campaign.from_record(loaded.to_record()).base_job.public_env == {"LOG_LEVEL": "level-info-7"}


def test_record_round_trip_keeps_everything_and_adds_no_options():
    loaded = resolve(campaign(scheduler={"type": "asha", "grace_period": 20}))
    again = Campaign.from_record(loaded.to_record())
    assert again.spec == loaded.spec and again.base == loaded.base and again.max_t == loaded.max_t


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"search_space": {"train.lrr": {"type": "choice", "values": [0.1]}}}, "field 'train.lrr'"),
        ({"search_space": {"trian.lr": {"type": "choice", "values": [0.1]}}}, "field 'trian'"),
        ({"search_space": {"model.hidden_size": {"type": "choice", "values": [[8]]}}}, "model.hidden_size"),
        ({"search_space": {"train.lr": {"type": "uniform", "low": -1, "high": 1}}}, "search_space 'train.lr' = -1"),
        ({"search_space": {"train.steps": {"type": "randint", "low": 0, "high": 5}}}, "field 'train.steps'"),
        ({"search_space": {"model.activation": {"type": "choice", "values": ["relu", "swish"]}}}, "'swish'"),
        ({"search_space": {"train.lr.x": {"type": "choice", "values": [1]}}}, "'lr' is not a section"),
        ({"overrides": {"train.stepz": 5}}, "field 'train.stepz'"),
        ({"base": "missing.yaml"}, "base job spec 'missing.yaml' does not exist"),
        ({"metric": "accuracy"}, "metric 'accuracy' is not reported by workload mlp"),
        ({"scheduler": {"type": "asha", "grace_period": 500}}, "scheduler.grace_period (500)"),
        ({"overrides": {"train.eval_every": 0}, "scheduler": {"type": "asha"}}, "train.eval_every 0"),
        ({"scheduler": {"type": "pbt"}, "search_space": {"train.l2": {"type": "uniform", "low": 0, "high": 1e-3}},
          "overrides": {"train.eval_every": 20, "checkpoint.every_steps": 0}}, "checkpoint.every_steps 0"),
    ],
)
def test_bad_campaigns_fail_at_submit_naming_the_field(fields, named):
    assert named in spec_error(campaign(**fields))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"nmae": "x"}, "field 'nmae': is not a known field"),
        ({"name": "a b"}, "field 'name'"),
        ({"search_space": {}}, "field 'search_space'"),
        ({"search_space": {"train.lr": {"type": "normal", "low": 0, "high": 1}}}, "field 'search_space.train.lr.type'"),
        ({"search_space": {"train.lr": {"type": "choice"}}}, "needs a non-empty 'values' list"),
        ({"search_space": {"train.lr": {"type": "uniform", "low": 1, "high": 1}}}, "must be a finite number smaller"),
        ({"search_space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}}, "loguniform needs low > 0"),
        ({"search_space": {"train.steps": {"type": "randint", "low": 1.5, "high": 9}}}, "whole numbers"),
        ({"search_space": {"train.lr": {"type": "uniform", "values": [1]}}}, "not 'values'"),
        ({"search_space": {"train..lr": {"type": "choice", "values": [1]}}}, "dotted job spec path"),
        ({"mode": "maximize"}, "field 'mode'"),
        ({"num_samples": 0}, "field 'num_samples'"),
        ({"scheduler": {"type": "asha", "perturbation_interval": 5}}, "scheduler.perturbation_interval applies to pbt"),
        ({"scheduler": {"type": "fifo", "grace_period": 5}}, "scheduler.grace_period applies to asha"),
        ({"search": {"algorithm": "grid"}}, "search.algorithm grid enumerates values"),
        ({"search": {"algorithm": "optuna"},
          "search_space": {"train.lr": {"type": "grid", "values": [0.1, 0.01]}}}, "optuna (TPE) cannot grid-search"),
        ({"search": {"algorithm": "optuna"},
          "search_space": {"model.hidden_sizes": {"type": "choice", "values": [[8], [16]]}}}, "numbers, strings"),
        ({"search": {"algorithm": "optuna"}, "scheduler": {"type": "pbt"}}, "cannot be combined"),
        ({"scheduler": {"type": "pbt"}}, "'train.lr' cannot change when PBT restarts"),
        ({"scheduler": {"type": "pbt", "hyperparam_mutations": ["train.l2"]}}, "'train.l2' is not a search_space key"),
        ({"budget": {"time_s": 0}}, "field 'budget.time_s'"),
        ({"trial_resources": {"num_workers": 0}}, "field 'trial_resources.num_workers'"),
        ({"trial_resources": {"launch": "inline"}}, "field 'trial_resources.launch'"),
    ],
)
def test_bad_campaign_fields_are_named(fields, named):
    assert named in spec_error(campaign(**fields))


def test_pbt_perturbation_interval_must_be_a_multiple_of_the_checkpoint_interval():
    data = campaign(overrides={"train.steps": 60, "train.eval_every": 20, "checkpoint.every_steps": 20},
                    search_space={"train.l2": {"type": "uniform", "low": 0, "high": 1e-3}},
                    scheduler={"type": "pbt", "perturbation_interval": 30})
    assert "perturbation_interval (30) must be a multiple of checkpoint.every_steps (20)" in spec_error(data)
    data["scheduler"]["perturbation_interval"] = 40
    assert resolve(data).spec.pbt_mutations() == ["train.l2"]


def test_search_space_values_and_ranges_probe_every_value_and_both_ends():
    assert ParamSpec(type="choice", values=[1, "a"]).probe_values() == [1, "a"]
    assert ParamSpec(type="uniform", low=0.5, high=2).probe_values() == [0.5, 2]
    assert ParamSpec(type="randint", low=2, high=10).probe_values() == [2, 9]  # high is exclusive


def test_max_t_defaults_to_the_longest_trial():
    loaded = resolve(campaign(search_space={"train.steps": {"type": "choice", "values": [30, 90]}},
                              overrides={"train.eval_every": 10}))
    assert loaded.max_t == 90
    assert resolve(campaign(scheduler={"type": "asha", "max_t": 50})).max_t == 50


def test_trial_count_multiplies_grids_and_samples():
    space = {"train.lr": {"type": "grid", "values": [0.1, 0.01]},
             "model.activation": {"type": "choice", "values": ["relu", "tanh", "gelu"]}}
    assert CampaignSpec(**campaign(search_space=space, search={"algorithm": "grid"})).trial_count() == 6
    assert CampaignSpec(**campaign(search_space=space, num_samples=4)).trial_count() == 8
    assert CampaignSpec(**campaign(search_space=space, num_samples=3, search={"algorithm": "grid"})).trial_count() == 18


def test_trial_spec_sets_dotted_keys_on_a_copy_and_parses():
    loaded = resolve(campaign())
    data = trial_spec_data(loaded.base, {"train.lr": 0.05, "model.hidden_sizes": [16]})
    spec = parse_spec(data)
    assert spec.train.lr == 0.05 and spec.model["hidden_sizes"] == [16]
    assert loaded.base["train"]["lr"] != 0.05  # the base is untouched


def test_set_overrides_reach_dotted_search_space_and_override_keys():
    data = apply_campaign_sets(campaign(), ["search_space.train.lr.high=0.5", "overrides.train.steps=40",
                                            "scheduler.type=asha", "num_samples=3"])
    assert data["search_space"]["train.lr"]["high"] == 0.5
    assert data["overrides"]["train.steps"] == 40
    assert data["scheduler"] == {"type": "asha"} and data["num_samples"] == 3
    with pytest.raises(SpecError, match="search_space.<dotted.key>.<field>"):
        apply_campaign_sets(campaign(), ["search_space.lr=1"])
