"""campaign.json / leaderboard.json / the plot, computed from trial stores laid out like jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.core import checkpoints as ckpt
from orchestrator.core.campaign_spec import resolve_campaign
from orchestrator.core.campaign_summary import (
    TrialView,
    campaign_summary,
    leaderboard,
    read_summary,
    trial_state,
    write_reports,
)
from orchestrator.storage import LocalStore
from tests.paths import EXAMPLES

EXAMPLES = EXAMPLES


@pytest.mark.parametrize(
    ("tune_status", "result", "to_end", "state"),
    [
        ("TERMINATED", {"status": "SUCCEEDED"}, True, "SUCCEEDED"),
        ("TERMINATED", None, True, "SUCCEEDED"),  # trained to the end; Tune ended it before result.json
        ("TERMINATED", None, False, "STOPPED"),  # the scheduler or the budget stopped it
        ("TERMINATED", {"status": "STOPPED"}, False, "STOPPED"),
        ("TERMINATED", {"status": "FAILED"}, False, "FAILED"),
        ("ERROR", None, False, "FAILED"),
        ("RUNNING", None, False, "RUNNING"),
        ("PAUSED", None, False, "PAUSED"),
        ("PENDING", None, False, "PENDING"),
    ],
)
def test_trial_state(tune_status, result, to_end, state):
    assert trial_state(tune_status, result, to_end) == state


def _write_trial(store: LocalStore, trial: str, accuracies: dict[int, float], final: bool, checkpoints: list[int]):
    rows = [{"step": s, "loss": 1.0 / s, "eval_accuracy": a} for s, a in accuracies.items()]
    rows.insert(1, {"step": 5, "loss": 0.5})  # a report without the metric
    if final:
        rows.append({"step": max(accuracies), "final": True, "eval_accuracy": accuracies[max(accuracies)]})
        store.put_bytes(f"trials/{trial}/result.json", json.dumps({"status": "SUCCEEDED"}).encode())
    store.put_bytes(f"trials/{trial}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    trial_store = store.child(f"trials/{trial}")
    for step in checkpoints:  # committed through the real protocol: rank part, then the manifest
        local = Path(store.root.parent / f"{trial}-{step}.pt")
        local.write_bytes(b"weights")
        trial_store.put_file(f"{ckpt.step_prefix(step)}/model.pt", local)
        ckpt.write_rank_part(trial_store, step, 0, [ckpt.file_entry(local, "model.pt")])
        assert ckpt.try_commit(trial_store, step, 1, {}, "hash") is not None


@pytest.fixture
def campaign_store(tmp_path):
    store = LocalStore(tmp_path / "campaign")
    _write_trial(store, "x_00000", {1: 0.1, 20: 0.8, 40: 0.9}, final=True, checkpoints=[40])
    _write_trial(store, "x_00001", {1: 0.1, 20: 0.5}, final=False, checkpoints=[])
    _write_trial(store, "x_00002", {1: 0.2, 20: 0.85, 40: 0.95}, final=False, checkpoints=[20])
    return store


def test_summary_counts_ranks_and_points_at_the_best_model(campaign_store):
    campaign = resolve_campaign({
        "name": "c", "base": "mlp-digits.yaml", "metric": "eval_accuracy", "mode": "max",
        "search_space": {"train.lr": {"type": "grid", "values": [0.1, 0.01]}}, "num_samples": 2,
    }, base_dir=EXAMPLES)
    # Tune stopped x_00001 at its step-1 report; it trained on to step 20 before it was torn down.
    views = [TrialView("x_00000", "TERMINATED", {"train.lr": 0.1}, 40), TrialView("x_00001", "TERMINATED", {}, 1),
             TrialView("x_00002", "RUNNING", {"train.lr": 0.01}, 20), TrialView("x_00003", "PENDING", {})]
    summary = campaign_summary("c-1", campaign, views, campaign_store, "RUNNING")
    assert summary["counts"] == {"total": 4, "pending": 1, "running": 1, "paused": 0, "succeeded": 1,
                                 "stopped": 1, "failed": 0}
    assert summary["planned_trials"] == 4 and summary["total_steps"] == 40 + 20 + 40
    by_id = {t["id"]: t for t in summary["trials"]}
    assert by_id["x_00001"]["early_stopped"] and not by_id["x_00000"]["early_stopped"]
    # Judged by what Tune saw when it stopped it; charged for every step it trained.
    assert by_id["x_00001"]["last_metric"] == 0.1 and by_id["x_00001"]["last_metric_step"] == 1
    assert by_id["x_00001"]["steps"] == 20 and by_id["x_00001"]["tune_step"] == 1
    assert by_id["x_00001"]["steps_after_stop"] == 19 and summary["steps_after_stop"] == 19
    assert by_id["x_00000"]["steps_after_stop"] == 0  # trained to its end: nothing after a stop
    # A running trial shows its newest value, even one Tune has not processed yet.
    assert by_id["x_00002"]["last_metric"] == 0.95
    assert by_id["x_00003"]["last_metric"] is None and by_id["x_00003"]["steps"] == 0
    best = summary["best_trial"]
    # The best last value is trial 2's 0.95 at step 40, but its newest checkpoint is step 20.
    assert (best["id"], best["value"], best["step"], best["checkpoint_step"]) == ("x_00002", 0.95, 40, 20)
    assert best["checkpoint_uri"].endswith("/trials/x_00002/checkpoints/step-000020")
    assert best["config"] == {"train.lr": 0.01}

    board = leaderboard(summary["trials"], "max")
    assert [row["id"] for row in board] == ["x_00002", "x_00000", "x_00001", "x_00003"]
    assert [row["rank"] for row in board] == [1, 2, 3, 4]
    assert [row["id"] for row in leaderboard(summary["trials"], "min")][:3] == ["x_00001", "x_00000", "x_00002"]
    assert summary["counts"]["stopped"] == 1 and by_id["x_00001"]["best_metric"] == 0.1

    write_reports(campaign_store, summary, plot=True)
    assert read_summary(campaign_store) == summary
    assert json.loads(campaign_store.get_bytes("leaderboard.json"))[0]["id"] == "x_00002"
    assert campaign_store.get_bytes("metric_vs_step.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_metric_yet_means_no_best_trial(tmp_path):
    campaign = resolve_campaign({
        "name": "c", "base": "mlp-digits.yaml", "search_space": {"train.lr": {"type": "choice", "values": [0.1]}},
    }, base_dir=EXAMPLES)
    summary = campaign_summary("c-1", campaign, [TrialView("y_00000", "PENDING", {})], LocalStore(tmp_path), "RUNNING")
    assert summary["best_trial"] is None and summary["counts"]["pending"] == 1



PLOT_AFTER_THE_DRIVER_START = '''
import sys
from orchestrator.core.campaign_summary import plot_png
from orchestrator.runtime.campaign.driver import import_ipython_whole
from orchestrator.storage import LocalStore
import_ipython_whole()
# matplotlib reads IPython's version once the name is in sys.modules (the failure when mlflow's thread was midway).
print(hasattr(sys.modules.get("IPython"), "version_info"))
summary = {"metric": "acc", "name": "c", "id": "c-1", "scheduler": "fifo", "best_trial": None, "trials": []}
print(plot_png(summary, LocalStore(sys.argv[1]))[:8] == b"\\x89PNG\\r\\n\\x1a\\n")
'''


def test_the_campaign_driver_imports_ipython_whole_before_any_thread_can_half_import_it(tmp_path):
    import subprocess
    import sys

    from tests.paths import REPO_ROOT

    proc = subprocess.run([sys.executable, "-c", PLOT_AFTER_THE_DRIVER_START, str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True"]
