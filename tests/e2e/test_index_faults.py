"""Faults of the control plane itself, with real Ray jobs: the `orch` process killed while it `--wait`s, and the
index deleted while a job runs. In both, what is left (the background scheduler; `orch sync`) finishes the job."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.control.scheduler import scheduler_running
from tests.e2e.conftest import REPO, metrics_rows, ray_jobs, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.e2e_timeout(600)]

# Long enough to be killed mid-run, short enough for a shared 2-core machine.
MLP_RUN = ["scaling.num_workers=1", "train.steps=3000", "train.warmup_steps=0", "train.eval_every=0",
           "train.eval_batches=1", "train.report_every=100", "checkpoint.every_steps=0"]


def _indexed(home: Path, job_id: str | None = None) -> dict | None:
    """The index as it is, read-only: reading it through `orch` would tick, which is what must not happen."""
    db = home / "jobs.db"
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT 1" if job_id is None else
                           "SELECT * FROM jobs WHERE id = ?", () if job_id is None else (job_id,)).fetchone()
    return dict(row) if row else None


def test_orch_killed_while_waiting_leaves_the_background_scheduler_to_finish_the_job(orch):
    waiting = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", str(REPO / "jobs/examples/mlp-digits.yaml"),
         *[a for s in MLP_RUN for a in ("--set", s)], "--wait"],
        cwd=REPO, env=orch.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rec = wait_for(lambda: (r := _indexed(orch.home)) and r["state"] == "RUNNING" and r, timeout=300,
                       what="the job to be RUNNING")
        assert scheduler_running(orch.home)
        waiting.send_signal(signal.SIGKILL)
        waiting.wait(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    job_id = rec["id"]
    assert rec["state"] == "RUNNING"  # killed mid-run, not after the job ended

    # Only the background scheduler runs `orch` code now; no command of the test ticks.
    final = wait_for(lambda: (r := _indexed(orch.home, job_id))["state"] not in ("STARTING", "RUNNING") and r,
                     timeout=400, what="the scheduler to record the job's end", poll_s=1.0)
    assert final["state"] == "SUCCEEDED", final["message"]
    assert final["finished_at"] and final["submissions"] == 1 and final["attempts"] == 1
    assert metrics_rows(orch.storage / "jobs" / job_id)[-1]["step"] == 3000
    assert ray_jobs(orch.env["ORCH_RAY_ADDRESS"]).get_job_status(job_id).value == "SUCCEEDED"
    wait_for(lambda: not scheduler_running(orch.home), timeout=60, what="the scheduler to exit with nothing left")


def test_index_deleted_while_a_real_job_runs_is_rebuilt_and_the_job_followed_to_its_end(orch):
    job_id, _ = orch.submit("jobs/examples/mlp-digits.yaml", *MLP_RUN, wait=False)
    wait_for(lambda: orch.status(job_id)["state"] == "RUNNING", timeout=300, what="the job to be RUNNING")
    for suffix in ("", "-wal", "-shm"):
        (orch.home / f"jobs.db{suffix}").unlink(missing_ok=True)

    synced = orch.run("sync").stdout
    assert job_id in synced
    rebuilt = orch.status(job_id)
    # Ray still runs it: sync says so, rather than declaring it lost, and nothing resubmits it.
    assert rebuilt["state"] == "RUNNING", rebuilt
    assert ray_jobs(orch.env["ORCH_RAY_ADDRESS"]).get_job_status(job_id).value == "RUNNING"

    wait_for(lambda: orch.status(job_id)["state"] not in ("STARTING", "RUNNING"), timeout=400, what="job end",
             poll_s=1.0)
    final = orch.status(job_id)
    assert final["state"] == "SUCCEEDED", final["message"]
    assert final["attempts"] == 1 and final["metrics"]["step"] == 3000
    assert _indexed(orch.home, job_id)["submissions"] == 1  # followed, never handed to Ray a second time
    submitted = {j.submission_id for j in ray_jobs(orch.env["ORCH_RAY_ADDRESS"]).list_jobs()}
    assert f"{job_id}-r2" not in submitted
