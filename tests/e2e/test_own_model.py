"""Bring your own model: the digits CNN example in jobs/examples/own_model, submitted like any job."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import committed_steps, metrics_rows

pytestmark = pytest.mark.e2e


def test_own_cnn_in_a_working_dir_trains_and_checkpoints(orch):
    job_id, _ = orch.submit("jobs/examples/digits-cnn.yaml", "train.steps=60", "train.eval_every=30",
                            "train.report_every=10", "checkpoint.every_steps=30", timeout=500)
    status = orch.status(job_id)
    assert status["state"] == "SUCCEEDED"
    job_root = orch.storage / "jobs" / job_id
    assert committed_steps(job_root) == [30, 60]
    rows = metrics_rows(job_root)
    final = [r for r in rows if r.get("final")][-1]
    # 120 images per step for 60 steps: a small CNN already classifies most validation digits.
    assert final["eval_accuracy"] > 0.8, final
    steps = [r["step"] for r in rows if "loss" in r and not r.get("final")]
    assert steps == sorted(steps) and steps[-1] == 60


def test_a_missing_module_in_the_working_dir_is_refused_at_submit(orch):
    proc = orch.run("submit", "jobs/examples/digits-cnn.yaml", "--set", "workload=digits_cnn.nothing:train",
                    check=False)
    assert proc.returncode == 2
    assert "digits_cnn.nothing" in proc.stderr and "working_dir" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert orch.run("list", "--json").stdout.strip() in ("[]", "")
