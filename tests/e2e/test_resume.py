"""Kill a job mid-run, `orch resume` it: it continues from the last committed step and its loss curve
matches an uninterrupted run with the same seeds (deterministic data order, restored RNG and optimizer)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import attempts, committed_steps, metrics_rows, wait_for

pytestmark = pytest.mark.e2e

SETTINGS = ("train.steps=80", "train.report_every=1", "train.eval_every=0", "checkpoint.every_steps=10",
            "checkpoint.keep_latest=0", "train.warmup_steps=5")
# fp32 on CPU with gloo is deterministic; a resumed run reproduces the uninterrupted losses to float noise.
LOSS_TOLERANCE = 1e-4


def test_cancelled_job_resumes_from_last_checkpoint_with_identical_losses(orch):
    reference_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *SETTINGS, "name=reference")
    reference = {r["step"]: r["loss"] for r in metrics_rows(orch.storage / "jobs" / reference_id) if not r.get("final")}

    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *SETTINGS, "name=interrupted", wait=False)
    root = orch.storage / "jobs" / job_id
    wait_for(lambda: (root / "checkpoints").exists() and committed_steps(root) and committed_steps(root)[-1] >= 10,
             timeout=300, what="a committed checkpoint at step >= 10")
    assert "CANCELLED" in orch.run("cancel", job_id).stdout
    last_committed = committed_steps(root)[-1]
    assert last_committed < 80

    proc = orch.run("resume", job_id, "--wait")
    assert "SUCCEEDED" in proc.stderr
    status = orch.status(job_id)
    assert status["state"] == "SUCCEEDED" and status["metrics"]["step"] == 80
    tries = attempts(root)
    assert len(tries) == 2 and status["attempts"] == 2
    assert tries[1]["restored_step"] == last_committed

    resumed = {r["step"]: r["loss"] for r in metrics_rows(root) if not r.get("final")}
    assert sorted(resumed) == list(range(1, 81))  # no step lost, none shown twice
    for step in range(last_committed + 1, 81):
        assert resumed[step] == pytest.approx(reference[step], abs=LOSS_TOLERANCE), step
