"""Concurrent use: 20 `orch submit` processes at once against a cluster that fits 2 jobs, and many processes
hammering the SQLite index.

The queue must accept all 20, start them oldest first as CPUs free up, never run more than 2 at a time,
and finish them all; the index must never be corrupted nor answer 'database is locked'.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime

import pytest

from orchestrator.control.cluster_address import cluster_usage
from tests.e2e.conftest import REPO, ray_jobs
from tests.s3server import free_port

pytestmark = pytest.mark.e2e

N_JOBS = 20
TINY_MLP = ["scaling.num_workers=1", "scaling.cpus_per_worker=1", "train.steps=5", "train.warmup_steps=0",
            "train.eval_every=0", "train.eval_batches=1", "train.report_every=5", "checkpoint.every_steps=0",
            "checkpoint.at_end=false", "failure.max_restarts=0", "name=fifo"]
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def orch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); communicate() drains both pipes, so a big output cannot block the child."""
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals [start, end) open at any one time."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda ev: (ev[0], ev[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_twenty_jobs_at_once_queue_fifo_two_at_a_time(orch):
    url = orch.env["ORCH_RAY_ADDRESS"]
    sets = [a for s in TINY_MLP for a in ("--set", s)]
    started = time.monotonic()
    procs = [subprocess.Popen(orch_cmd("submit", str(REPO / "jobs/examples/mlp-digits.yaml"), *sets), cwd=REPO,
                              env=orch.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(N_JOBS)]
    results = [finish(p) for p in procs]
    submit_s = time.monotonic() - started
    assert all(rc == 0 for rc, _, _ in results), [err for rc, _, err in results if rc]
    ids = {out.strip().splitlines()[-1] for _, out, _ in results}
    assert len(ids) == N_JOBS

    # Poll the index (each `orch list` also ticks, like a user watching) until every job is finished.
    last_seen: dict[str, str] = {}
    try:
        peak_active = peak_cpu = 0.0
        deadline = time.monotonic() + 900  # ~30 s per tiny job on 2 busy cores: see the module docstring
        while True:
            records = json.loads(orch.run("list", "--json").stdout)
            jobs = [r for r in records if r["id"] in ids]
            last_seen = {r["id"]: r["state"] for r in jobs}
            peak_active = max(peak_active, sum(r["state"] in ("STARTING", "RUNNING") for r in jobs))
            peak_cpu = max(peak_cpu, cluster_usage(url).get("CPU", (0.0, 0.0))[0])
            if all(r["state"] in TERMINAL for r in jobs):
                break
            assert time.monotonic() < deadline, [(r["id"], r["state"], r["message"]) for r in jobs]
            time.sleep(3.0)  # a watcher's pace: each `orch list` is a Python process competing with the jobs' CPUs
    finally:  # a failed run must not leave queued jobs behind for the background scheduler to watch
        for job_id in ids:
            if last_seen.get(job_id) not in TERMINAL:
                orch.run("cancel", job_id, check=False)
    total_s = time.monotonic() - started

    assert [r["state"] for r in jobs] == ["SUCCEEDED"] * N_JOBS, [(r["id"], r["state"], r["message"]) for r in jobs]
    assert peak_active <= 2  # (Ray's CPU usage cannot exceed the 2-CPU cluster, so it is only reported below)
    # The scheduler's own record of it: never more than 2 jobs between launch and finish.
    assert max_overlap([(ts(r["started_at"]), ts(r["finished_at"])) for r in jobs]) <= 2
    # FIFO: `orch list` is in queue (creation) order, and Ray received the jobs in that same order.
    ray_start = {j.submission_id: j.start_time for j in ray_jobs(url).list_jobs() if j.submission_id in ids}
    queue_order = [r["id"] for r in jobs]
    assert sorted(queue_order, key=ray_start.__getitem__) == queue_order
    assert [r["started_at"] for r in jobs] == sorted(r["started_at"] for r in jobs)

    durations = [ts(r["finished_at"]) - ts(r["started_at"]) for r in jobs]
    print(f"\n{N_JOBS} jobs: submit {submit_s:.1f} s, all finished {total_s:.1f} s, per job launch->finish "
          f"min {min(durations):.0f} / mean {sum(durations) / len(durations):.1f} / max {max(durations):.0f} s, "
          f"peak active {peak_active:.0f}, peak CPU {peak_cpu:.0f}")


HAMMER = textwrap.dedent('''
    import json, sys
    from orchestrator.core.states import JobState
    from orchestrator.control.index import JobRecord, JobIndex

    db, worker, n, address = JobIndex(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    moved = 0
    for i in range(n):
        db.insert(JobRecord(id=f"{worker}-{i}", name=worker, state=JobState.QUEUED, storage_uri="file:///nowhere",
                            spec={"i": i}, ray_address=address))
        db.list()
        # Everyone races for everyone's jobs: compare-and-set lets exactly one process move each.
        for rec in db.list(states=[JobState.QUEUED]):
            moved += db.transition(rec.id, JobState.QUEUED, JobState.CANCELLED)
        db.update(f"{worker}-{i}", metrics_json={"step": i})
    print(json.dumps({"moved": moved}))
''')


def test_many_processes_hammering_the_index(tmp_path):
    home = tmp_path / "orch-home"
    home.mkdir()
    db = home / "jobs.db"
    workers, per_worker = 8, 40
    env = {"ORCH_HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    # The jobs' cluster does not answer, so the CLI's tick reads them all but never launches one.
    address = f"http://127.0.0.1:{free_port()}"
    writers = [subprocess.Popen([sys.executable, "-c", HAMMER, str(db), f"w{k}", str(per_worker), address],
                                cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for k in range(workers)]
    # Real CLI processes listing (and ticking) while the writers write.
    readers = [subprocess.Popen(orch_cmd("list", "--json"), cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE) for _ in range(6)]
    outputs = [finish(p) for p in writers + readers]
    for rc, _, err in outputs:
        assert rc == 0 and "locked" not in err and "Traceback" not in err, err
    moved = sum(json.loads(out)["moved"] for _, out, _ in outputs[:workers])
    assert moved == workers * per_worker  # every job moved exactly once, whoever won the race
    for _, out, _ in outputs[workers:]:
        assert isinstance(json.loads(out), list)

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        assert rows == [("CANCELLED", workers * per_worker)]
        assert conn.execute("SELECT COUNT(DISTINCT seq) FROM jobs").fetchone()[0] == workers * per_worker
