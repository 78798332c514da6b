"""The campaign driver's verdict says why its trials failed (the reasons the trials wrote), or which budget ended it."""

from __future__ import annotations

import json

from orchestrator.core.campaign_spec import Campaign, resolve_campaign
from orchestrator.core.run import trial_key, write_result
from orchestrator.runtime.campaign.driver import CampaignProgress
from orchestrator.storage import LocalStore
from tests.paths import EXAMPLES


def test_failed_trials_are_listed_with_the_reason_each_wrote(tmp_path):
    store = LocalStore(tmp_path / "campaign")
    write_result(store.child(trial_key("a_00001")), "FAILED", "RuntimeError: loss is nan at step 7")
    write_result(store.child(trial_key("a_00002")), "FAILED", "x" * 1000)
    progress = CampaignProgress("c-1", campaign=None, store_uri=store.uri)  # type: ignore[arg-type]
    why = progress._why(["a_00001", "a_00002", "a_00003"])
    assert why == ("a_00001 (RuntimeError: loss is nan at step 7); a_00002 (" + "x" * 300 + "); "
                   "a_00003 (no reason recorded)")


def _campaign(budget: dict) -> Campaign:
    return resolve_campaign({
        "name": "c", "base": "mlp-digits.yaml", "search_space": {"train.lr": {"type": "grid", "values": [0.1]}},
        "budget": budget}, base_dir=EXAMPLES)


def test_a_spent_step_budget_is_the_campaigns_message(tmp_path):
    store = LocalStore(tmp_path / "campaign")
    for trial, steps in (("a_00000", 40), ("a_00001", 30)):
        rows = [{"step": s, "loss": 1.0} for s in range(10, steps + 1, 10)]
        store.put_bytes(f"{trial_key(trial)}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    assert CampaignProgress("c-1", _campaign({"total_steps": 100}), store.uri).budget_spent() == ""
    spent = CampaignProgress("c-1", _campaign({"total_steps": 70}), store.uri).budget_spent()
    assert spent == "step budget reached: 70 steps trained (budget.total_steps 70)"
    assert CampaignProgress("c-1", _campaign({}), store.uri).budget_spent() == ""
    timed = CampaignProgress("c-1", _campaign({"time_s": 0.01}), store.uri)
    timed._started -= 1.0  # the driver started a second ago
    assert timed.budget_spent() == "time budget reached (budget.time_s 0.01)"
