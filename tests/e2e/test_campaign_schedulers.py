"""The other schedulers and searchers through the real CLI: PBT (exploit, then a killed driver resumed), Hyperband
with optuna TPE, and grid search under a step budget. Tiny MLP trials, one worker each."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import REPO, attempts, committed_steps, metrics_rows, ray_jobs, wait_for

pytestmark = pytest.mark.e2e


def _tune(orch, campaign: Path, *args: str, timeout: float = 900):
    proc = orch.run("tune", str(campaign), *args, timeout=timeout, check="--wait" not in args)
    return proc.stdout.strip().splitlines()[-1], proc


def _driver_pid(orch, submission_id: str) -> int | None:
    info = ray_jobs(orch.env["ORCH_RAY_ADDRESS"]).get_job_info(submission_id)
    return int(info.driver_info.pid) if info.driver_info and info.status.value == "RUNNING" else None


def _pbt_events(trial: Path) -> list[dict[str, Any]]:
    path = trial / "pbt.json"
    return json.loads(path.read_text()) if path.exists() else []


def _rows_of_attempt(trial: Path, number: int) -> list[dict[str, Any]]:
    """The metrics rows written by attempt `number` (1-based): from its start to the next attempt's start. Rows carry
    their time to the second only, and a trial in its own process restarts within the second: rows up to the step
    the attempt restored, in the second it started, are the previous attempt's (the rows after that step were
    dropped when it restored)."""
    runs = attempts(trial)
    start, restored = runs[number - 1]["started_at"], runs[number - 1]["restored_step"]
    end = runs[number]["started_at"] if number < len(runs) else "9999"
    return [r for r in metrics_rows(trial) if not r.get("final") and start <= r.get("time", "") < end
            and not (r["time"] == start and r["step"] <= restored)]


@pytest.mark.e2e_timeout(900)
def test_pbt_campaign_clones_a_committed_checkpoint_and_resumes_after_its_driver_is_killed(orch):
    example = REPO / "jobs/examples/tune-mlp-pbt.yaml"
    spec = yaml.safe_load(example.read_text())
    every, steps, report = (spec["overrides"][k] for k in ("checkpoint.every_steps", "train.steps",
                                                           "train.report_every"))
    campaign_id, _ = _tune(orch, example)
    root = orch.storage / "campaigns" / campaign_id

    def cloned() -> tuple[Path, dict[str, Any]] | None:
        return next(((t, events[0]) for t in sorted((root / "trials").glob("*")) if (events := _pbt_events(t))), None)

    # Kill the campaign's driver as soon as a trial has cloned another's checkpoint, as that trial starts from it:
    # the resumed driver is the one that continues it.
    clone, event = wait_for(cloned, timeout=500, what="a PBT exploit", poll_s=0.2)
    pid = _driver_pid(orch, campaign_id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert not (clone / "result.json").exists()
    wait_for(lambda: orch.status(campaign_id)["state"] == "FAILED", timeout=60, what="the campaign marked FAILED")

    proc = orch.run("resume", campaign_id, "--wait", timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    status = orch.status(campaign_id)
    assert status["state"] == "SUCCEEDED" and status["attempts"] == 2 and status["scheduler"] == "pbt"
    trials = {Path(t["store_uri"].removeprefix("file://")).name: t for t in status["trials"]}
    assert len(trials) == 2 and all(t["state"] == "SUCCEEDED" and t["steps"] == steps for t in trials.values())

    # The clone came from the other trial, at a checkpoint the donor had committed (a step it saved at).
    donor = next(p for p in (root / "trials").iterdir() if p.is_dir() and p != clone)
    assert event["cloned_from"] == donor.as_uri(), (event, donor)
    cloned_step = event["step"]
    assert cloned_step > 0 and cloned_step % every == 0
    assert cloned_step in [r["step"] for r in metrics_rows(donor) if not r.get("final")]
    # It continued from the donor's step: the attempt that restored it reports the very next steps, in order. (The
    # driver kill may have cut short a first such attempt before it reported: the trial then restored it again.)
    numbers = [i + 1 for i, a in enumerate(attempts(clone)) if i > 0 and a["restored_step"] == cloned_step]
    rows = next((rows for n in reversed(numbers) if (rows := [r["step"] for r in _rows_of_attempt(clone, n)])), [])
    assert rows and cloned_step < rows[0] <= cloned_step + report and rows == sorted(set(rows)), rows
    # With the mutated config: the newest clone's values are the trial's config, and its spec says so.
    last = _pbt_events(clone)[-1]
    assert set(last["config"]) == {"train.l2", "train.input_noise"}
    assert trials[clone.name]["config"] == last["config"]
    trial_spec = yaml.safe_load((clone / "spec.yaml").read_text())["train"]
    assert (trial_spec["l2"], trial_spec["input_noise"]) == (last["config"]["train.l2"],
                                                             last["config"]["train.input_noise"])
    # The driver kill cost no training: every trial ends with a committed final checkpoint and result.
    for trial in (clone, donor):
        assert steps in committed_steps(trial)
        assert json.loads((trial / "result.json").read_text())["status"] == "SUCCEEDED"
    # The driver's second run resumed the trial that was mid-run from its own checkpoint, not from step 0.
    assert attempts(clone)[-1]["restored_step"] >= cloned_step


def _mlp_campaign(name: str, **fields: Any) -> dict[str, Any]:
    """A tiny digits MLP campaign: 30 steps per trial, one worker each, an eval every 10 steps."""
    return {
        "name": name,
        "base": str(REPO / "jobs/examples/mlp-digits.yaml"),
        "overrides": {"train.steps": 30, "train.warmup_steps": 0, "train.report_every": 10, "train.eval_every": 10,
                      "checkpoint.every_steps": 30, "checkpoint.keep_latest": 1, "checkpoint.keep_best": 0,
                      "failure.max_restarts": 0},
        "metric": "eval_accuracy", "mode": "max",
        "trial_resources": {"num_workers": 1, "cpus_per_worker": 1},
        **fields,
    }


@pytest.mark.e2e_timeout(600)
def test_hyperband_with_optuna_and_grid_search_under_a_step_budget(orch, tmp_path):
    # Hyperband over 3 configs that optuna's TPE proposes; each trial a Ray Train worker group, as a multi-worker
    # trial's would be, so the workers wait at the rungs for Tune's decision (the decision gate).
    spec = tmp_path / "hyperband.yaml"
    campaign = _mlp_campaign(
        "tune-hb-optuna", num_samples=3, max_concurrent_trials=2,
        search_space={"train.lr": {"type": "loguniform", "low": 1.0e-3, "high": 0.1},
                      "train.l2": {"type": "choice", "values": [0.0, 1.0e-4]}},
        search={"algorithm": "optuna", "seed": 0}, scheduler={"type": "hyperband", "reduction_factor": 3})
    campaign["trial_resources"]["launch"] = "worker_group"
    spec.write_text(yaml.safe_dump(campaign))
    campaign_id, proc = _tune(orch, spec, "--wait")
    assert proc.returncode == 0, proc.stderr
    assert "each starts a Ray Train worker group of 1" in proc.stderr
    status = orch.status(campaign_id)
    assert (status["state"], status["scheduler"], status["search"]) == ("SUCCEEDED", "hyperband", "optuna")
    assert status["trial_launch"] == "worker_group" and status["steps_after_stop"] == 0
    trials = status["trials"]
    assert len(trials) == 3 and {t["state"] for t in trials} <= {"SUCCEEDED", "STOPPED"}, trials
    assert len({t["config"]["train.lr"] for t in trials}) == 3  # TPE's own proposals, not one value thrice
    assert any(t["state"] == "SUCCEEDED" and t["steps"] == 30 for t in trials)
    # Asynchronous Hyperband: a trial is only stopped at a rung (10 steps; 30 is the end), where it waited.
    assert all(t["tune_step"] == t["steps"] == 10 for t in trials if t["state"] == "STOPPED"), trials
    assert status["best_trial"]["value"] == max(t["last_metric"] for t in trials)

    # Grid search, one trial at a time, stopped by a budget of 100 steps: 40 + 40 + 20 of the third trial.
    spec = tmp_path / "grid.yaml"
    campaign = _mlp_campaign(
        "tune-grid-budget", max_concurrent_trials=1, budget={"total_steps": 100},
        search_space={"train.lr": {"type": "grid", "values": [0.003, 0.01, 0.03, 0.1]}},
        search={"algorithm": "grid"})
    campaign["overrides"].update({"train.steps": 40, "checkpoint.every_steps": 40})
    spec.write_text(yaml.safe_dump(campaign))
    campaign_id, proc = _tune(orch, spec, "--wait")
    status = orch.status(campaign_id)
    assert status["trial_launch"] == "in_process"
    trials = status["trials"]
    assert [t["config"]["train.lr"] for t in trials[:3]] == [0.003, 0.01, 0.03], trials
    assert [t["state"] for t in trials[:3]] == ["SUCCEEDED", "SUCCEEDED", "STOPPED"], trials
    assert [t["steps"] for t in trials[:2]] == [40, 40] and trials[2]["tune_step"] == trials[2]["steps"] == 20
    assert all(t["state"] == "PENDING" and t["steps"] == 0 for t in trials[3:])  # never started
    assert status["state"] == "SUCCEEDED" and "budget" in status["message"], status
    assert proc.returncode == 0, proc.stderr
