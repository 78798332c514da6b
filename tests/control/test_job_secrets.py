"""Every env value is secret: it goes through the 0600 secrets file only, the file goes when the job ends in any
state, and `orch resume` gives the job its values back from its own environment."""

from __future__ import annotations

import json
import os
import time

import pytest

from orchestrator.control import job_secrets
from orchestrator.control.index import ray_submission_id
from orchestrator.core.errors import OrchError, SpecError
from orchestrator.core.spec import parse_spec
from orchestrator.core.states import JobState
from orchestrator.storage import open_store
from tests.control.test_manager import URL, FakeRay, _finish
from tests.control.test_manager import manager as manager  # noqa: F401, PLC0414 - the fixture

ENV = {"PLAIN_LOOKING": "value-plain-1", "HF_TOKEN": "hf-token-2"}


class RecordingRay(FakeRay):
    def __init__(self) -> None:
        super().__init__()
        self.runtime_envs: list[dict] = []

    def submit(self, submission_id, entrypoint, runtime_env, metadata):
        self.runtime_envs.append(runtime_env)
        super().submit(submission_id, entrypoint, runtime_env, metadata)


def _job(name: str = "sec", workers: int = 2, restarts: int = 0):
    return parse_spec({"name": name, "workload": "mlp", "scaling": {"num_workers": workers},
                       "failure": {"max_restarts": restarts}, "env": ENV, "public_env": {"LOG_LEVEL": "shown-3"}})


def _file(manager, job_id: str):
    return manager.secrets_dir / f"{job_id}.env"


def test_env_values_go_only_through_the_secrets_file(manager):
    manager._ray[URL] = RecordingRay()
    rec = manager.submit(_job())
    path = _file(manager, rec.id)
    assert path.stat().st_mode & 0o777 == 0o600 and (path.parent.stat().st_mode & 0o077) == 0
    assert {k: v for k, v in json.loads(path.read_text()).items() if k in ENV} == ENV
    settings = json.dumps(manager._ray[URL].runtime_envs)
    assert "shown-3" in settings and not [v for v in ENV.values() if v in settings]
    stored = open_store(rec.storage_uri).get_bytes("spec.yaml").decode()
    db = (manager.home / "jobs.db").read_bytes() + b"".join(
        p.read_bytes() for p in manager.home.glob("jobs.db-*"))
    for text in (stored, db.decode(errors="replace")):
        assert "shown-3" in text and not [v for v in ENV.values() if v in text]


@pytest.mark.parametrize("verdict", ["SUCCEEDED", "FAILED"])
def test_the_file_goes_when_the_job_ends(manager, verdict):
    rec = manager.submit(_job())
    _finish(manager, rec.id, verdict)
    manager.tick()
    assert manager.db.get(rec.id).state == JobState(verdict)
    assert not _file(manager, rec.id).exists()


def test_the_file_goes_when_a_running_or_queued_job_is_cancelled(manager):
    running = manager.submit(_job("a"))
    queued = manager.submit(_job("b"))
    assert manager.db.get(queued.id).state == JobState.QUEUED
    manager.cancel(queued.id)
    assert not _file(manager, queued.id).exists()
    manager._ray[URL].statuses[running.id] = "RUNNING"
    assert manager.cancel(running.id).state == JobState.CANCELLED
    assert not _file(manager, running.id).exists()


def test_the_file_stays_while_a_lost_driver_is_resubmitted(manager):
    rec = manager.submit(_job(restarts=1))
    _finish(manager, rec.id, None)  # Ray says FAILED, no verdict: resubmitted within the budget
    manager.tick()
    assert manager.db.get(rec.id).submissions == 2 and _file(manager, rec.id).exists()
    _finish(manager, rec.id, None)
    manager.tick()
    assert manager.db.get(rec.id).state == JobState.FAILED and not _file(manager, rec.id).exists()


def test_the_file_goes_when_handing_the_job_to_ray_fails(manager):
    class Refusing(FakeRay):
        def submit(self, *args, **kwargs):
            raise RuntimeError("Ray refused")

    manager._ray[URL] = Refusing()
    rec = manager.submit(_job())
    assert manager.db.get(rec.id).state == JobState.FAILED and not _file(manager, rec.id).exists()


def test_resume_takes_the_values_from_its_environment(manager, monkeypatch):
    rec = manager.submit(_job())
    _finish(manager, rec.id, "FAILED")
    manager.tick()
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf-token-again")
    with pytest.raises(OrchError, match=r"sets env PLAIN_LOOKING in its spec.*export PLAIN_LOOKING=\.\.\."):
        manager.resume(rec.id)
    assert manager.db.get(rec.id).state == JobState.FAILED and not _file(manager, rec.id).exists()

    monkeypatch.setenv("PLAIN_LOOKING", "value-plain-again")
    resumed = manager.resume(rec.id)
    assert resumed.state == JobState.STARTING and manager._ray[URL].submitted[-1] == ray_submission_id(resumed)
    path = _file(manager, rec.id)
    assert path.stat().st_mode & 0o777 == 0o600
    values = json.loads(path.read_text())
    assert (values["HF_TOKEN"], values["PLAIN_LOOKING"]) == ("hf-token-again", "value-plain-again")


def test_sweep_removes_files_of_ended_records_only(manager):
    ended = manager.submit(_job("a", workers=1))
    active = manager.submit(_job("b", workers=1))
    manager.db.update(ended.id, cancel_requested=True)
    manager.db.transition(ended.id, JobState.STARTING, JobState.FAILED)  # e.g. by `orch sync`: file left behind
    orphan = manager.secrets_dir / "not-recorded-yet.env"
    orphan.write_text("{}")
    old = time.time() - 2 * job_secrets.SWEEP_GRACE_S
    for path in manager.secrets_dir.iterdir():
        os.utime(path, (old, old))
    job_secrets.sweep(manager.secrets_dir, manager.db)
    assert not _file(manager, ended.id).exists()
    assert _file(manager, active.id).exists() and orphan.exists()


def test_public_env_may_hold_nothing_secret(manager):
    with pytest.raises(SpecError, match="public_env.API_TOKEN looks like a secret"):
        parse_spec({"name": "x", "workload": "mlp", "public_env": {"API_TOKEN": "t"}})
    with pytest.raises(SpecError, match="public_env.URL looks like a secret"):
        parse_spec({"name": "x", "workload": "mlp", "public_env": {"URL": "https://u:pw@h/"}})
    with pytest.raises(SpecError, match="MODE is set in both env and public_env"):
        parse_spec({"name": "x", "workload": "mlp", "env": {"MODE": "a"}, "public_env": {"MODE": "b"}})
