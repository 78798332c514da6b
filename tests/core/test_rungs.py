"""Where trials wait for the scheduler: ASHA's rungs, mapped to the first report that carries the metric."""

from __future__ import annotations

from orchestrator.core.campaign_spec import resolve_campaign
from orchestrator.core.rungs import decision_steps, hyperband_brackets, rung_steps
from orchestrator.core.spec import parse_spec
from tests.paths import EXAMPLES


def _campaign(scheduler: dict, steps: int = 120) -> object:
    return resolve_campaign({
        "name": "c", "base": "mlp-digits.yaml", "metric": "eval_accuracy", "mode": "max",
        "overrides": {"train.steps": steps, "train.eval_every": 20},
        "search_space": {"train.lr": {"type": "grid", "values": [0.1, 0.01]}}, "scheduler": scheduler,
    }, base_dir=EXAMPLES)


def test_asha_rungs_are_grace_times_powers_of_the_reduction_factor_below_max_t():
    assert rung_steps(_campaign({"type": "asha", "grace_period": 40, "reduction_factor": 2})) == [40, 80]
    assert rung_steps(_campaign({"type": "asha", "grace_period": 10, "reduction_factor": 3}, 100)) == [10, 30, 90]
    assert rung_steps(_campaign({"type": "asha", "grace_period": 120, "reduction_factor": 2})) == []


def test_other_schedulers_are_not_gated():
    assert rung_steps(_campaign({"type": "fifo"})) == []


def test_hyperband_is_gated_at_its_first_brackets_rungs_which_hold_every_brackets():
    assert rung_steps(_campaign({"type": "hyperband", "grace_period": 10, "reduction_factor": 3}, 100)) == [10, 30, 90]
    assert hyperband_brackets(10, 3, 100) == 3 and hyperband_brackets(10, 3, 90) == 3
    assert hyperband_brackets(10, 3, 30) == 2 and hyperband_brackets(10, 3, 20) == 1


def _job(report_every: int, eval_every: int, steps: int = 120):
    return parse_spec({"name": "j", "workload": "mlp", "train": {"steps": steps, "report_every": report_every,
                                                                 "eval_every": eval_every}}, source="t")


def test_the_decision_is_at_the_first_report_carrying_the_metric():
    # eval_* metrics come only with evals: rung 30 is judged at the eval at step 40.
    assert decision_steps(_job(10, 20), [30.0, 90.0], "eval_accuracy") == [40, 100]
    # The loss comes with every report and every eval.
    assert decision_steps(_job(10, 25), [30.0, 47.0], "loss") == [30, 50]
    # Fractional rungs (reduction factor 1.5) round up; a decision at or past the last step never waits.
    assert decision_steps(_job(5, 5), [22.5, 118.0], "loss") == [25]
    assert decision_steps(_job(10, 0), [40.0], "eval_accuracy") == []
