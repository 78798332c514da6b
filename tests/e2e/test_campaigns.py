"""Tuning campaigns through the real CLI: Ray Tune over real TorchTrainer + DeepSpeed trials on a local cluster."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import REPO, attempts, committed_steps, metrics_rows, ray_jobs, wait_for

pytestmark = pytest.mark.e2e


def _tune(orch, campaign: Path, *args: str, timeout: float = 900):
    proc = orch.run("tune", str(campaign), *args, timeout=timeout, check="--wait" not in args)
    return proc.stdout.strip().splitlines()[-1], proc


def test_mlp_asha_example_stops_trials_early_and_its_best_model_scores_what_it_reported(orch, tmp_path):
    campaign_id, proc = _tune(orch, REPO / "jobs/examples/tune-mlp-asha.yaml", "--wait")
    assert proc.returncode == 0, proc.stderr
    assert "SUCCEEDED" in proc.stderr and "stopped early" in proc.stderr  # the live progress lines
    assert "each trains in its own Tune process" in proc.stderr  # one CPU worker: no worker group to start
    status = orch.status(campaign_id)
    assert status["kind"] == "campaign" and status["state"] == "SUCCEEDED" and status["trial_launch"] == "in_process"
    trials = status["trials"]
    assert len(trials) == 8 and status["counts"]["total"] == 8
    assert {t["state"] for t in trials} <= {"SUCCEEDED", "STOPPED"}
    stopped = [t for t in trials if t["early_stopped"]]
    finished = [t for t in trials if t["state"] == "SUCCEEDED"]
    # ASHA (grace 40 steps, halving) stopped some trials at a rung; the survivors trained all 120 steps.
    assert stopped and finished, [(t["id"], t["state"], t["tune_step"], t["steps"]) for t in trials]
    for trial in stopped:  # judged at a rung (40 or 80), where its report waited for the decision: no step more
        assert trial["tune_step"] in (40, 80) and trial["last_metric_step"] == trial["tune_step"]
        assert trial["steps"] == trial["tune_step"] and trial["steps_after_stop"] == 0, trial
    assert status["steps_after_stop"] == 0
    assert all(t["steps"] == t["tune_step"] == 120 for t in finished)
    assert status["total_steps"] == sum(t["steps"] for t in trials) < 8 * 120
    assert set(trials[0]["config"]) == {"train.lr", "model.hidden_sizes", "train.l2"}

    best = status["best_trial"]
    assert best["value"] == max(t["last_metric"] for t in trials if t["last_metric"] is not None)
    assert best["metric"] == "eval_accuracy" and best["value"] > 0.8
    assert best["step"] == best["checkpoint_step"] == 120  # measured on the final model, which was saved

    root = orch.storage / "campaigns" / campaign_id
    assert (root / "metric_vs_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    board = json.loads((root / "leaderboard.json").read_text())
    assert board[0]["id"] == best["id"] and [row["rank"] for row in board] == list(range(1, 9))
    trial_root = root / "trials" / best["id"]
    assert json.loads((trial_root / "result.json").read_text())["status"] == "SUCCEEDED"
    assert committed_steps(trial_root) == [120]
    assert best["checkpoint_uri"] == (trial_root / "checkpoints" / "step-000120").as_uri()

    # The best trial, exported through the CLI, scores exactly the accuracy it reported (mlp evaluates the whole
    # validation split, as `orch predict` does).
    spec = yaml.safe_load((trial_root / "spec.yaml").read_text())
    assert spec["train"]["lr"] == best["config"]["train.lr"]
    assert spec["model"]["hidden_sizes"] == best["config"]["model.hidden_sizes"]
    exported = tmp_path / "best.pt"
    assert f"of {campaign_id}" in orch.run("export", campaign_id, "--out", str(exported)).stdout  # best by default
    predicted = json.loads(orch.run("predict", campaign_id, "--model", str(exported), "--json").stdout)
    assert abs(predicted["accuracy"] - best["value"]) <= 1e-6, (predicted["accuracy"], best["value"])
    assert "OK" in orch.run("verify", campaign_id, "--trial", best["id"]).stdout

    table = orch.run("status", campaign_id).stdout
    assert "Leaderboard" in table and best["id"] in table and "STOPPED" in table


def _driver_pid(orch, submission_id: str) -> int | None:
    info = ray_jobs(orch.env["ORCH_RAY_ADDRESS"]).get_job_info(submission_id)
    return int(info.driver_info.pid) if info.driver_info and info.status.value == "RUNNING" else None


def test_killed_campaign_driver_is_resumed_without_rerunning_finished_trials(orch, tmp_path):
    # Two trials side by side: a short one that finishes, and a long one that is mid-run when the driver dies.
    campaign = tmp_path / "resume.yaml"
    campaign.write_text(yaml.safe_dump({
        "name": "tune-resume",
        "base": str(REPO / "jobs/examples/mlp-digits.yaml"),
        "overrides": {"train.eval_every": 50, "train.report_every": 10, "train.warmup_steps": 0,
                      "checkpoint.every_steps": 50, "checkpoint.keep_latest": 1, "checkpoint.keep_best": 0,
                      "failure.max_restarts": 0},
        "search_space": {"train.steps": {"type": "grid", "values": [50, 1500]}},
        "search": {"algorithm": "grid"},
        "metric": "eval_accuracy", "mode": "max",
        "trial_resources": {"num_workers": 1, "cpus_per_worker": 1},
    }))
    campaign_id, _ = _tune(orch, campaign)
    root = orch.storage / "campaigns" / campaign_id

    def trial_dirs() -> list[Path]:
        return sorted(p for p in (root / "trials").glob("*") if (p / "spec.yaml").exists())

    def short_done_and_long_checkpointed() -> bool:
        dirs = trial_dirs()
        return (len(dirs) == 2 and (dirs[0] / "result.json").exists()
                and any(s >= 50 for s in committed_steps(dirs[1])))

    wait_for(short_done_and_long_checkpointed, timeout=300, what="trial 1 done and trial 2 checkpointed", poll_s=0.2)
    pid = _driver_pid(orch, campaign_id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    short, long = trial_dirs()
    before = {"metrics": (short / "metrics.jsonl").read_bytes(), "attempts": attempts(short),
              "result": (short / "result.json").read_bytes()}
    assert not (long / "result.json").exists() and metrics_rows(long)[-1]["step"] < 1500

    failed = wait_for(lambda: (s := orch.status(campaign_id))["state"] == "FAILED" and s, timeout=60,
                      what="the campaign to be marked FAILED")
    assert f"orch resume {campaign_id}" in failed["message"]
    started = time.monotonic()
    proc = orch.run("resume", campaign_id, "--wait", timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    status = orch.status(campaign_id)
    assert status["state"] == "SUCCEEDED" and status["attempts"] == 2  # two driver runs
    assert [t["state"] for t in status["trials"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert [t["steps"] for t in status["trials"]] == [50, 1500]

    # The finished trial was not run again: its files are byte for byte what they were.
    assert (short / "metrics.jsonl").read_bytes() == before["metrics"]
    assert (short / "result.json").read_bytes() == before["result"]
    assert attempts(short) == before["attempts"] and len(before["attempts"]) == 1
    # The interrupted one continued from its newest verified checkpoint instead of starting over.
    runs = attempts(long)
    assert len(runs) == 2 and runs[0]["restored_step"] == 0 and runs[1]["restored_step"] >= 50
    steps = [r["step"] for r in metrics_rows(long) if not r.get("final")]
    assert steps == sorted(set(steps)) and steps[-1] == 1500  # one continuous curve, no step twice
    assert json.loads((long / "result.json").read_text())["status"] == "SUCCEEDED"
    print(f"resume took {time.monotonic() - started:.0f} s")
