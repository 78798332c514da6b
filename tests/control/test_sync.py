"""`orch sync` rebuilds the index from storage: the right state for every job, nothing else touched."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from orchestrator.control import cli
from orchestrator.control import sync as sync_module
from orchestrator.control.index import JobRecord
from orchestrator.control.manager import JobManager
from orchestrator.control.sync import RaySubmission, sync_index
from orchestrator.core.spec import load_spec_file
from orchestrator.core.states import JobState
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
SPEC = load_spec_file(REPO / "jobs" / "examples" / "mlp-digits.yaml", ["env.WANDB_API_KEY=sk-x"]).redacted()
HOUR_AGO = time.time() - 3600


def make_job(storage: Path, job_id: str, *, result: dict | None = None, steps: int = 0,
             written: float = HOUR_AGO) -> Path:
    root = storage / "jobs" / job_id
    root.mkdir(parents=True)
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    os.utime(root / "spec.yaml", (written, written))
    if steps:
        rows = [{"step": s, "loss": 2.0 / s} for s in range(1, steps + 1)]
        (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / "attempts").mkdir()
        attempt = {"attempt": 1, "started_at": "2026-01-01T00:00:00+00:00"}
        (root / "attempts" / "attempt-0001.json").write_text(json.dumps(attempt))
    if result is not None:
        (root / "result.json").write_text(json.dumps(result))
    return root


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobManager:
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ORCH_RAY_ADDRESS", raising=False)
    return JobManager()


def test_states_from_storage_without_a_cluster(manager, tmp_path):
    storage = manager.home / "storage"
    make_job(storage, "done-1", result={"status": "SUCCEEDED", "finished_at": "2026-01-01T01:00:00+00:00"}, steps=3)
    make_job(storage, "broke-1", result={"status": "FAILED", "reason": "RuntimeError: boom"}, steps=2)
    make_job(storage, "lost-1", steps=4)
    make_job(storage, "fresh-1", written=time.time())
    result = sync_index(manager, [storage.as_uri()])

    records = {rec.id: rec for rec in manager.db.list()}
    assert set(records) == {"done-1", "broke-1", "lost-1"}
    assert result.skipped.keys() == {"fresh-1"}  # maybe a submit in progress: not declared lost
    done = records["done-1"]
    assert (done.state, done.metrics["step"], done.metrics["loss"]) == (JobState.SUCCEEDED, 3, 2.0 / 3)
    assert done.finished_at == "2026-01-01T01:00:00+00:00" and done.started_at == "2026-01-01T00:00:00+00:00"
    assert done.attempts == 1 and done.cpus == 2 and done.storage_uri == (storage / "jobs" / "done-1").as_uri()
    assert done.spec["env"]["WANDB_API_KEY"] == "***redacted***"
    assert (records["broke-1"].state, records["broke-1"].message) == (JobState.FAILED, "RuntimeError: boom")
    lost = records["lost-1"]
    assert lost.state == JobState.FAILED and lost.message.startswith("lost: no result.json and the Ray cluster")
    assert "orch resume" in lost.message and lost.metrics["step"] == 4


def test_running_job_known_to_ray_is_followed_again(manager, monkeypatch):
    storage = manager.home / "storage"
    make_job(storage, "live-1", steps=2)
    make_job(storage, "stopped-1", steps=1)
    url = "http://127.0.0.1:8265"
    monkeypatch.setattr(sync_module, "ray_submissions", lambda _m, _u: {
        "live-1": RaySubmission(url, "RUNNING", "", submissions=2),
        "stopped-1": RaySubmission(url, "STOPPED", "", submissions=1)})
    sync_index(manager, [storage.as_uri()])
    live = manager.db.get("live-1")
    assert (live.state, live.ray_address, live.submissions, live.finished_at) == (JobState.RUNNING, url, 2, None)
    assert manager.db.get("stopped-1").state == JobState.CANCELLED


def test_existing_records_are_left_alone_and_order_is_kept(manager):
    storage = manager.home / "storage"
    make_job(storage, "queued-1", written=HOUR_AGO)  # no result, unknown to Ray, but the index knows it
    make_job(storage, "b-job", result={"status": "SUCCEEDED"}, written=HOUR_AGO + 20)
    make_job(storage, "a-job", result={"status": "SUCCEEDED"}, written=HOUR_AGO + 10)
    manager.db.insert(JobRecord(id="queued-1", name="q", state=JobState.QUEUED, storage_uri="file:///x", spec={}))
    result = sync_index(manager, [storage.as_uri()])
    assert result.already_indexed == ["queued-1"]
    assert manager.db.get("queued-1").state == JobState.QUEUED
    assert [r.id for r in manager.db.list()] == ["queued-1", "a-job", "b-job"]  # oldest spec first
    assert sync_index(manager, [storage.as_uri()]).added == []  # idempotent


def test_cli_sync_scans_extra_storage_and_skips_unreadable(manager, tmp_path, capsys):
    other = tmp_path / "elsewhere"
    make_job(other, "far-1", result={"status": "SUCCEEDED"}, steps=5)
    broken = make_job(other, "broken-1", result={"status": "SUCCEEDED"})
    (broken / "spec.yaml").write_text("name: [unclosed\n")
    assert cli.main(["sync", "--storage", str(other)]) == 0
    printed = capsys.readouterr().out
    assert "far-1" in printed and "skipped broken-1" in printed and "Indexed 1 job(s) from 2 storage" in printed
    assert cli.main(["status", "far-1", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "SUCCEEDED" and status["metrics"]["step"] == 5


def test_cli_sync_refuses_a_bad_storage_uri(manager, capsys):
    assert cli.main(["sync", "--storage", "ftp://nowhere/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Storage ftp://nowhere/x: unsupported storage URI") and "Traceback" not in err


def test_in_flight_window_is_relative_to_now(manager):
    storage = manager.home / "storage"
    make_job(storage, "recent-1", written=HOUR_AGO)
    in_flight = datetime.fromtimestamp(HOUR_AGO, timezone.utc) + timedelta(seconds=10)
    assert sync_index(manager, [storage.as_uri()], now=in_flight).skipped.keys() == {"recent-1"}
