"""`orch sync` after the index is deleted: the jobs come back from storage with their state, step and loss."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

pytestmark = pytest.mark.e2e

TINY_MLP = ["scaling.num_workers=1", "train.steps=6", "train.warmup_steps=0", "train.eval_every=0",
            "train.eval_batches=1", "train.report_every=3", "checkpoint.every_steps=0"]
# Timestamps are rebuilt from storage (spec written, first attempt, result), so they may differ by seconds.
SAME = ("id", "kind", "name", "state", "attempts", "storage_uri", "ray_address", "message", "metrics", "cpus", "gpus")


def test_sync_rebuilds_a_deleted_index(orch, tmp_path):
    other = tmp_path / "other-storage"
    job_id, _ = orch.submit("jobs/examples/mlp-digits.yaml", *TINY_MLP)
    elsewhere, _ = orch.submit("jobs/examples/mlp-digits.yaml", *TINY_MLP, "name=elsewhere", f"storage={other}")
    before = {j: orch.status(j) for j in (job_id, elsewhere)}
    assert before[job_id]["state"] == "SUCCEEDED" and before[job_id]["metrics"]["step"] == 6

    for suffix in ("", "-wal", "-shm"):
        (orch.home / f"jobs.db{suffix}").unlink(missing_ok=True)
    assert "No jobs yet" in orch.run("list").stdout

    synced = json.loads(orch.run("sync", "--storage", str(other), "--json").stdout)
    assert sorted(r["id"] for r in synced["added"]) == sorted((job_id, elsewhere)) and not synced["skipped"]
    for j in (job_id, elsewhere):
        after = orch.status(j)
        assert {k: after[k] for k in SAME} == {k: before[j][k] for k in SAME}
        assert after["metrics"]["loss"] == before[j]["metrics"]["loss"]
        assert after["started_at"] and after["finished_at"]
        created = [datetime.fromisoformat(r["created_at"]) for r in (before[j], after)]
        assert abs((created[1] - created[0]).total_seconds()) <= 5  # the spec is written at submit time
    assert "already indexed" in orch.run("sync", "--storage", str(other)).stdout  # running it again is harmless
    assert len(json.loads(orch.run("list", "--json").stdout)) == 2
