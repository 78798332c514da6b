"""The manager's queue and reconciliation, driven step by step against a fake Ray (fast, no cluster)."""

from __future__ import annotations

import json

import pytest

import orchestrator.control.manager as manager_module
from orchestrator.control.index import ray_submission_id
from orchestrator.control.manager import JobManager
from orchestrator.core.errors import OrchError
from orchestrator.core.spec import parse_spec
from orchestrator.core.states import JobState
from orchestrator.storage import open_store

URL = "http://127.0.0.1:9"


class FakeRay:
    """Stands in for the Ray Jobs API: records submissions, answers the status the test sets."""

    def __init__(self) -> None:
        self.url = URL
        self.submitted: list[str] = []
        self.statuses: dict[str, str] = {}
        self.stopped: list[str] = []

    def submit(self, submission_id, entrypoint, runtime_env, metadata):
        assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(runtime_env)
        self.submitted.append(submission_id)
        self.statuses[submission_id] = "PENDING"

    def status(self, submission_id, budget_s=None):
        return self.statuses.get(submission_id), "driver exited" if self.statuses.get(submission_id) == "FAILED" else ""

    def stop(self, submission_id):
        self.stopped.append(submission_id)
        self.statuses[submission_id] = "STOPPED"


@pytest.fixture
def manager(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(manager_module, "cluster_totals", lambda url: {"CPU": 2.0, "GPU": 0.0})
    mgr = JobManager(address=URL)
    mgr._shares_machine[URL] = True  # the fake cluster runs here
    mgr._ray[URL] = FakeRay()
    return mgr


def _spec(name: str, workers: int = 2, restarts: int = 1):
    return parse_spec({"name": name, "workload": "mlp", "scaling": {"num_workers": workers},
                       "failure": {"max_restarts": restarts}})


def _finish(mgr: JobManager, job_id: str, verdict: str | None) -> None:
    rec = mgr.db.get(job_id)
    if verdict:
        open_store(rec.storage_uri).put_bytes("result.json", json.dumps({"status": verdict}).encode())
    mgr._ray[URL].statuses[ray_submission_id(rec)] = "SUCCEEDED" if verdict == "SUCCEEDED" else "FAILED"


def test_jobs_wait_queued_until_resources_free_then_run_in_order(manager):
    first = manager.submit(_spec("a"))
    second = manager.submit(_spec("b"))
    third = manager.submit(_spec("c", workers=1))
    assert [first.state, second.state, third.state] == [JobState.STARTING, JobState.QUEUED, JobState.QUEUED]
    manager._ray[URL].statuses[first.id] = "RUNNING"
    manager.tick()
    assert manager.db.get(first.id).state == JobState.RUNNING
    # Strict FIFO: the 1-worker job does not jump ahead of the 2-worker one that waits for the whole cluster.
    assert manager.db.get(third.id).state == JobState.QUEUED
    _finish(manager, first.id, "SUCCEEDED")
    manager.tick()
    assert manager.db.get(first.id).state == JobState.SUCCEEDED
    assert manager.db.get(second.id).state == JobState.STARTING
    assert manager._ray[URL].submitted == [first.id, second.id]


def test_job_larger_than_the_cluster_is_refused_and_nothing_is_written(manager):
    with pytest.raises(OrchError, match="needs 3 CPUs .* whole cluster has 2 CPUs"):
        manager.submit(_spec("big", workers=3))
    assert manager.db.list() == []
    assert not (manager.home / "storage").exists()


def test_lost_driver_is_resubmitted_within_budget_then_fails(manager):
    rec = manager.submit(_spec("lost", restarts=1))
    _finish(manager, rec.id, verdict=None)  # Ray says FAILED, the driver wrote no verdict
    manager.tick()
    again = manager.db.get(rec.id)
    assert again.state == JobState.STARTING and again.submissions == 2
    assert manager._ray[URL].submitted == [rec.id, f"{rec.id}-r2"]
    _finish(manager, rec.id, verdict=None)
    manager.tick()
    final = manager.db.get(rec.id)
    assert final.state == JobState.FAILED and "driver exited" in final.message


def test_training_failure_with_a_verdict_is_not_resubmitted(manager):
    rec = manager.submit(_spec("bad"))
    store = open_store(manager.db.get(rec.id).storage_uri)
    store.put_bytes("result.json", json.dumps({"status": "FAILED", "reason": "ValueError: boom"}).encode())
    manager._ray[URL].statuses[rec.id] = "FAILED"
    manager.tick()
    final = manager.db.get(rec.id)
    assert (final.state, final.message, final.submissions) == (JobState.FAILED, "ValueError: boom", 1)


def test_success_without_result_is_failure(manager):
    rec = manager.submit(_spec("odd"))
    manager._ray[URL].statuses[rec.id] = "SUCCEEDED"
    manager.tick()
    assert manager.db.get(rec.id).state == JobState.FAILED


def test_cancel_and_resume(manager):
    queued_first = manager.submit(_spec("runs"))
    waiting = manager.submit(_spec("waits"))
    assert manager.cancel(waiting.id).state == JobState.CANCELLED  # never reached Ray
    manager._ray[URL].statuses[queued_first.id] = "RUNNING"
    manager.tick()
    cancelled = manager.cancel(queued_first.id)
    assert cancelled.state == JobState.CANCELLED and manager._ray[URL].stopped == [queued_first.id]
    with pytest.raises(OrchError, match="already CANCELLED"):
        manager.cancel(queued_first.id)
    resumed = manager.resume(queued_first.id)
    assert resumed.state == JobState.STARTING and resumed.submissions == 2
    with pytest.raises(OrchError, match="only FAILED or CANCELLED"):
        manager.resume(queued_first.id)


def test_spec_is_stored_redacted_and_secrets_file_is_private(manager):
    spec = parse_spec({"name": "s", "workload": "mlp", "env": {"WANDB_API_KEY": "sk-123"},
                       "public_env": {"MODE": "x"}})
    rec = manager.submit(spec)
    stored = open_store(rec.storage_uri).get_bytes("spec.yaml").decode()
    assert "sk-123" not in stored and "MODE: x" in stored
    secrets = manager.secrets_dir / f"{rec.id}.env"
    assert secrets.stat().st_mode & 0o777 == 0o600
    assert json.loads(secrets.read_text())["WANDB_API_KEY"] == "sk-123"


def test_driver_verdict_in_ray_logs_is_used_when_storage_could_not_take_it(manager):
    rec = manager.submit(_spec("nostore", restarts=3))
    fake = manager._ray[URL]
    fake.statuses[rec.id] = "FAILED"
    ray_message = ("Job entrypoint command failed with exit code 1, last available logs:\nTraceback ...\norch: job "
                   "FAILED: StorageError: 3 checkpoints in a row could not be uploaded\n")
    fake.status = lambda sid, budget_s=None: ("FAILED", ray_message)
    manager.tick()
    final = manager.db.get(rec.id)
    assert final.state == JobState.FAILED and final.submissions == 1  # a verdict: not resubmitted
    assert final.message == "StorageError: 3 checkpoints in a row could not be uploaded"


def test_a_cluster_on_another_machine_is_refused_local_storage(manager):
    manager.address, manager._shares_machine[URL] = URL, False  # e.g. a kubectl port-forward to a remote head
    with pytest.raises(OrchError, match=r"storage: file://.* runs elsewhere .* s3://"):
        manager.submit(_spec("remote"))
    assert manager.db.list() == [] and not (manager.home / "storage").exists()


def test_a_job_on_an_unreachable_cluster_that_is_not_ours_stays_as_it_is(manager, monkeypatch):
    rec = manager.submit(_spec("far"))
    manager._ray[URL].statuses[rec.id] = "RUNNING"
    manager.tick()

    budgets = []

    class Unreachable(FakeRay):
        def status(self, submission_id, budget_s=None):
            budgets.append(budget_s)
            raise manager_module.ClusterUnavailable("down")

    manager._ray[URL] = Unreachable()
    manager.tick()
    # Not the embedded cluster: it may come back with the job still running, so it is neither failed nor rerun.
    assert manager.db.get(rec.id).state == JobState.RUNNING
    # Following a job retries its status only briefly (no answer changes nothing), never ORCH_RAY_RETRY_S' 60 s,
    # and not at all when the user turned retries off.
    assert budgets == [manager_module.OBSERVE_RETRY_S] and manager_module.OBSERVE_RETRY_S <= 5
    monkeypatch.setenv("ORCH_RAY_RETRY_S", "0")
    manager.tick()
    assert budgets[-1] == 0


def test_resume_without_address_goes_back_to_the_cluster_the_job_ran_on(manager):
    rec = manager.submit(_spec("home"))
    manager._ray[URL].statuses[rec.id] = "RUNNING"
    manager.tick()
    manager.cancel(rec.id)
    manager.address = None  # the next command runs without --address: no embedded cluster is started for it
    resumed = manager.resume(rec.id)
    assert resumed.ray_address == URL and resumed.state == JobState.STARTING
    assert not (manager.home / "cluster" / "cluster.json").exists()


def test_a_status_that_cannot_read_the_store_keeps_the_attempts_it_knew(manager, monkeypatch):
    job = manager.submit(_spec("a"))
    store = open_store(job.storage_uri)
    for n in (1, 2):
        store.put_bytes(f"attempts/attempt-{n:04d}.json", b"{}")
    manager._ray[URL].statuses[job.id] = "RUNNING"
    manager.tick()
    assert manager.db.get(job.id).attempts == 2
    # Another `orch status` without the storage credentials: every read fails, the count stays.
    monkeypatch.setattr(manager_module, "count_attempts", lambda store: 0)
    manager.tick()
    assert manager.db.get(job.id).attempts == 2
