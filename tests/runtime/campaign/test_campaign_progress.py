"""The campaign driver's verdict says why its trials failed (the reasons the trials wrote)."""

from __future__ import annotations

from orchestrator.core.run import trial_key, write_result
from orchestrator.runtime.campaign.driver import CampaignProgress
from orchestrator.storage import LocalStore


def test_failed_trials_are_listed_with_the_reason_each_wrote(tmp_path):
    store = LocalStore(tmp_path / "campaign")
    write_result(store.child(trial_key("a_00001")), "FAILED", "RuntimeError: loss is nan at step 7")
    write_result(store.child(trial_key("a_00002")), "FAILED", "x" * 1000)
    progress = CampaignProgress("c-1", campaign=None, store_uri=store.uri)  # type: ignore[arg-type]
    why = progress._why(["a_00001", "a_00002", "a_00003"])
    assert why == ("a_00001 (RuntimeError: loss is nan at step 7); a_00002 (" + "x" * 300 + "); "
                   "a_00003 (no reason recorded)")
