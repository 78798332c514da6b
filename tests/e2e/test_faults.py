"""Faults survived: a killed training worker, a killed driver, a damaged checkpoint. Nothing lost, nothing run twice."""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.conftest import attempts, committed_steps, metrics_rows, ray_jobs, wait_for

pytestmark = pytest.mark.e2e

LONG_RUN = ("train.steps=120", "train.eval_every=0", "checkpoint.every_steps=10", "checkpoint.keep_latest=0")


def _rank_pid(root, rank: int) -> int:
    import json

    return json.loads((root / f"workers/rank-{rank:05d}.json").read_text())["pid"]


def _wait_committed(root, at_least: int) -> list[int]:
    return wait_for(lambda: (root / "checkpoints").exists() and [s for s in committed_steps(root) if s >= at_least],
                    timeout=300, what=f"a committed checkpoint at step >= {at_least}")


def test_killed_worker_restarts_from_newest_checkpoint(orch):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *LONG_RUN, "failure.max_restarts=2", wait=False)
    root = orch.storage / "jobs" / job_id
    _wait_committed(root, 10)
    os.kill(_rank_pid(root, 1), signal.SIGKILL)
    before_kill = committed_steps(root)[-1]

    orch.run("status", job_id, "--json")  # reconcile once; then wait for the end
    wait_for(lambda: orch.status(job_id)["state"] in ("SUCCEEDED", "FAILED"), timeout=400, what="job end")
    status = orch.status(job_id)
    assert status["state"] == "SUCCEEDED", status["message"]
    assert status["attempts"] == 2 and status["metrics"]["step"] == 120
    second = attempts(root)[1]
    assert second["restored_step"] >= before_kill and second["restored_step"] in committed_steps(root)
    steps = [r["step"] for r in metrics_rows(root) if not r.get("final")]
    assert steps == sorted(set(steps)) and steps[-1] == 120  # the curve continues, no step listed twice


def test_killed_worker_past_max_restarts_fails_with_reason(orch):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *LONG_RUN, "failure.max_restarts=0", wait=False)
    root = orch.storage / "jobs" / job_id
    _wait_committed(root, 10)
    os.kill(_rank_pid(root, 0), signal.SIGKILL)
    wait_for(lambda: orch.status(job_id)["state"] in ("SUCCEEDED", "FAILED"), timeout=300, what="job end")
    status = orch.status(job_id)
    assert status["state"] == "FAILED"
    assert status["attempts"] == 1
    assert "died" in status["message"].lower() or "worker" in status["message"].lower(), status["message"]


def test_killed_driver_is_resubmitted_and_continues(orch):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *LONG_RUN, "failure.max_restarts=1", wait=False)
    root = orch.storage / "jobs" / job_id
    _wait_committed(root, 10)
    info = ray_jobs(orch.env["ORCH_RAY_ADDRESS"]).get_job_info(job_id)
    os.kill(int(info.driver_info.pid), signal.SIGKILL)
    wait_for(lambda: orch.status(job_id)["state"] in ("SUCCEEDED", "FAILED"), timeout=400, what="job end")
    status = orch.status(job_id)
    assert status["state"] == "SUCCEEDED", status["message"]
    tries = attempts(root)
    assert len(tries) == 2 and tries[1]["restored_step"] >= 10
    assert metrics_rows(root)[-1]["step"] == 120


def test_corrupted_newest_checkpoint_is_skipped_on_resume(orch):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *LONG_RUN, wait=False)
    root = orch.storage / "jobs" / job_id
    _wait_committed(root, 20)
    assert "CANCELLED" in orch.run("cancel", job_id).stdout
    steps = committed_steps(root)
    newest, previous = steps[-1], steps[-2]
    shard = root / "checkpoints" / f"step-{newest:06d}" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))

    verify = orch.run("verify", job_id, check=False)
    assert verify.returncode == 1
    assert f"step {newest}: BAD" in verify.stdout and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in verify.stdout

    orch.run("resume", job_id, "--wait")
    assert orch.status(job_id)["state"] == "SUCCEEDED"
    assert attempts(root)[1]["restored_step"] == previous
