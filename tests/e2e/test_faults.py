"""Faults survived: a killed training worker past its restart budget, a killed driver, a damaged checkpoint.
Nothing lost, nothing run twice.

A killed worker that resumes with the same losses: test_zero3_memory.py (gpt) and test_pretraining_path.py (llama)."""

from __future__ import annotations

import os
import signal

import pytest

from orchestrator.control.index import JobIndex
from tests.e2e.conftest import attempts, committed_steps, metrics_rows, ray_jobs, wait_for

pytestmark = pytest.mark.e2e

LONG_RUN = ("train.steps=120", "train.eval_every=0", "checkpoint.every_steps=10", "checkpoint.keep_latest=0")


def _rank_pid(root, rank: int) -> int:
    import json

    return json.loads((root / f"workers/rank-{rank:05d}.json").read_text())["pid"]


def _wait_committed(root, at_least: int) -> list[int]:
    return wait_for(lambda: (root / "checkpoints").exists() and [s for s in committed_steps(root) if s >= at_least],
                    timeout=300, what=f"a committed checkpoint at step >= {at_least}")


def test_killed_worker_past_max_restarts_fails_with_reason(orch):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *LONG_RUN, "failure.max_restarts=1", wait=False)
    root = orch.storage / "jobs" / job_id
    _wait_committed(root, 10)
    first = _rank_pid(root, 1)
    os.kill(first, signal.SIGKILL)
    # The one restart allowed: a new worker group (rank 1 has a new process) that has restored and recorded its
    # attempt (a kill before that record would leave one attempt on file); then rank 1 dies again.
    second = wait_for(lambda: len(attempts(root)) == 2 and (pid := _rank_pid(root, 1)) != first and pid,
                      timeout=300, what="the restart")
    os.kill(second, signal.SIGKILL)
    wait_for(lambda: orch.status(job_id)["state"] in ("SUCCEEDED", "FAILED"), timeout=300, what="job end")
    status = orch.status(job_id)
    assert status["state"] == "FAILED" and status["attempts"] == 2  # no attempt past the budget
    assert "worker rank 1 died" in status["message"], status["message"]


def test_killed_driver_is_resubmitted_and_continues(orch):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *LONG_RUN, "failure.max_restarts=1", wait=False)
    root = orch.storage / "jobs" / job_id
    _wait_committed(root, 10)
    client = ray_jobs(orch.env["ORCH_RAY_ADDRESS"])
    os.kill(int(client.get_job_info(job_id).driver_info.pid), signal.SIGKILL)
    wait_for(lambda: orch.status(job_id)["state"] in ("SUCCEEDED", "FAILED"), timeout=400, what="job end")
    status = orch.status(job_id)
    assert status["state"] == "SUCCEEDED", status["message"]
    tries = attempts(root)
    assert len(tries) == 2 and metrics_rows(root)[-1]["step"] == 120
    # Restored from the newest checkpoint committed before the second run started, not an older one.
    started = (root / "attempts" / "attempt-0002.json").stat().st_mtime
    committed_then = [s for s in committed_steps(root)
                      if (root / "checkpoints" / f"step-{s:06d}" / "MANIFEST.json").stat().st_mtime < started]
    assert tries[1]["restored_step"] == max(committed_then) >= 10
    # Resubmitted once, as -r2, after the first driver was gone: never two drivers at once.
    ours = {j.submission_id: j for j in client.list_jobs() if j.submission_id.startswith(job_id)}
    assert set(ours) == {job_id, f"{job_id}-r2"}
    assert ours[job_id].status.value == "FAILED" and ours[f"{job_id}-r2"].status.value == "SUCCEEDED"
    assert ours[job_id].end_time <= ours[f"{job_id}-r2"].start_time
    assert JobIndex(orch.home / "jobs.db").get(job_id).submissions == 2


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
