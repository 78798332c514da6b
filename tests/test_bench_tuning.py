"""The tuning benchmark compares like with like: its campaign pairs differ only where the comparison says."""

from __future__ import annotations

from bench.bench_tuning import campaign_variants, launch_variants
from orchestrator.core.campaign_spec import resolve_campaign
from tests.paths import EXAMPLES

ASHA_EXAMPLE = EXAMPLES / "tune-mlp-asha.yaml"


def _without(spec: dict, *keys: str) -> dict:
    return {k: v for k, v in spec.items() if k not in keys}


def test_launch_variants_differ_only_in_how_trials_start():
    before, after = launch_variants(ASHA_EXAMPLE, trials=12).values()
    assert before["trial_resources"]["launch"] == "worker_group" and after["trial_resources"]["launch"] == "auto"
    assert _without(before, "name", "trial_resources") == _without(after, "name", "trial_resources")
    assert before["num_samples"] == 12 and before["scheduler"] == {"type": "fifo"}
    resolved = [resolve_campaign(spec, base_dir=EXAMPLES) for spec in (before, after)]
    assert [c.trial_launch for c in resolved] == ["worker_group", "in_process"]


def test_asha_and_random_search_sample_the_same_configs():
    asha, full = campaign_variants(ASHA_EXAMPLE, samples=27, seed=8, eta=3, grace=10, steps=270).values()
    assert asha["scheduler"]["type"] == "asha" and full["scheduler"] == {"type": "fifo"}
    assert _without(asha, "name", "scheduler") == _without(full, "name", "scheduler")
