"""Launching under concurrency: one launcher at a time, Ray first, and a cancel that races a launch wins."""

from __future__ import annotations

import pytest

import orchestrator.control.manager as manager_module
from orchestrator.control.manager import JobManager
from orchestrator.core.states import JobState
from tests.control.test_manager import URL, FakeRay, _spec


@pytest.fixture
def manager(tmp_path, monkeypatch) -> JobManager:
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(manager_module, "cluster_totals", lambda url: {"CPU": 2.0, "GPU": 0.0})
    mgr = JobManager(address=URL)
    mgr._shares_machine[URL] = True  # the fake cluster runs here
    mgr._ray[URL] = FakeRay()
    return mgr


def test_a_second_process_does_not_launch_while_one_is_launching(manager):
    rec = manager.submit(_spec("held", workers=1))
    assert rec.state == JobState.STARTING
    other = JobManager(address=URL)  # another `orch` process, same ORCH_HOME
    other._shares_machine[URL] = True  # the fake cluster runs here
    other._ray[URL] = manager._ray[URL]
    with manager._launch_lock() as mine:
        assert mine
        # 1 CPU is free, but someone else is launching: submit and tick leave the queue alone.
        queued = other.submit(_spec("waits", workers=1))
        other.tick()
        assert other.db.get(queued.id).state == JobState.QUEUED
    other.tick()
    assert other.db.get(queued.id).state == JobState.STARTING
    assert manager._ray[URL].submitted == [rec.id, queued.id]


def test_ray_has_the_job_before_anyone_sees_it_starting(manager):
    fake: FakeRay = manager._ray[URL]
    seen = []
    original = fake.submit

    def submit(submission_id, *args, **kwargs):
        seen.append(manager.db.get(submission_id).state)  # what a reconciling process would see now
        original(submission_id, *args, **kwargs)

    fake.submit = submit
    rec = manager.submit(_spec("order"))
    assert seen == [JobState.QUEUED] and manager.db.get(rec.id).state == JobState.STARTING


def test_cancel_while_ray_takes_the_job_stops_it(manager):
    fake: FakeRay = manager._ray[URL]
    original = fake.submit

    def submit(submission_id, *args, **kwargs):
        original(submission_id, *args, **kwargs)
        JobManager(address=URL).cancel(submission_id)  # the user, from another terminal, right now

    fake.submit = submit
    rec = manager.submit(_spec("raced"))
    final = manager.db.get(rec.id)
    assert final.state == JobState.CANCELLED and fake.stopped == [rec.id]


def test_secrets_file_exists_before_the_record_a_scheduler_could_launch(manager, monkeypatch):
    from orchestrator.core.spec import parse_spec

    insert = manager.db.insert
    seen = []

    def watching_insert(rec):
        seen.append((manager.secrets_dir / f"{rec.id}.env").is_file())
        insert(rec)

    monkeypatch.setattr(manager.db, "insert", watching_insert)
    manager.submit(parse_spec({"name": "s", "workload": "mlp", "env": {"HF_TOKEN": "hf-x"}}))
    assert seen == [True]
