"""Campaign records against a fake Ray Jobs API: reconcile verdicts, resume, status views."""

from __future__ import annotations

import json

import pytest
import yaml

from orchestrator.control.campaigns import campaign_status, launch_campaign, reconcile_campaign, resume_campaign
from orchestrator.control.index import JobRecord
from orchestrator.control.manager import JobManager
from orchestrator.core.campaign_spec import resolve_campaign
from orchestrator.core.errors import OrchError
from orchestrator.core.states import JobState
from orchestrator.storage import LocalStore
from tests.paths import EXAMPLES

EXAMPLES = EXAMPLES
URL = "http://127.0.0.1:8265"


class FakeRay:
    def __init__(self) -> None:
        self.status_value: tuple[str | None, str] = ("PENDING", "")
        self.submitted: list[tuple[str, str]] = []

    def status(self, submission_id: str, budget_s: float | None = None) -> tuple[str | None, str]:
        return self.status_value

    def submit(self, submission_id, entrypoint, runtime_env, metadata) -> None:
        self.submitted.append((submission_id, entrypoint))


@pytest.fixture
def setup(tmp_path):
    manager = JobManager(home=tmp_path / "home", address=URL)
    manager._shares_machine[URL] = True  # the fake cluster runs here
    ray = FakeRay()
    manager._ray[URL] = ray
    campaign = resolve_campaign({"name": "c", "base": "mlp-digits.yaml", "metric": "eval_accuracy", "mode": "max",
                                 "search_space": {"train.lr": {"type": "choice", "values": [0.1, 0.01]}}},
                                base_dir=EXAMPLES)
    store = LocalStore(tmp_path / "storage" / "campaigns" / "c-1")
    record = {**campaign.to_record(), "concurrency": 2}
    store.put_bytes("spec.yaml", yaml.safe_dump(record).encode())
    manager.db.insert(JobRecord(id="c-1", name="c", state=JobState.QUEUED, storage_uri=store.uri, spec=record,
                                kind="campaign", ray_address=URL, cpus=2.0))
    assert launch_campaign(manager, manager.db.get("c-1"))
    return manager, ray, store


def _summary(store: LocalStore, state: str, reason: str = "", trial_state: str = "SUCCEEDED") -> None:
    store.put_bytes("campaign.json", json.dumps({
        "state": state, "reason": reason, "metric": "eval_accuracy", "mode": "max", "planned_trials": 8,
        "counts": {"total": 1, "running": int(trial_state == "RUNNING"), "succeeded": int(trial_state == "SUCCEEDED")},
        "total_steps": 120, "best_trial": {"id": "a_00000", "value": 0.9}, "trials": [
            {"id": "a_00000", "state": trial_state, "config": {}, "last_metric": 0.9, "steps": 120,
             "early_stopped": False}],
    }).encode())


def test_launch_submits_the_campaign_driver_as_a_ray_job(setup):
    manager, ray, store = setup
    rec = manager.db.get("c-1")
    assert rec.state == JobState.STARTING and rec.submissions == 1
    submission_id, entrypoint = ray.submitted[0]
    assert submission_id == "c-1"
    assert "-m orchestrator.runtime.campaign.driver --campaign-id c-1 --store " + store.uri in entrypoint


def test_progress_then_success(setup):
    manager, ray, store = setup
    ray.status_value = ("RUNNING", "")
    _summary(store, "RUNNING", trial_state="RUNNING")
    rec = manager.reconcile(manager.db.get("c-1"))  # JobManager hands campaigns to reconcile_campaign
    assert rec.state == JobState.RUNNING
    assert rec.metrics["running"] == 1 and rec.metrics["best"] == 0.9 and rec.metrics["planned"] == 8
    ray.status_value = ("SUCCEEDED", "")
    _summary(store, "SUCCEEDED")
    rec = reconcile_campaign(manager, rec)
    assert rec.state == JobState.SUCCEEDED and rec.message == "" and rec.finished_at


def test_driver_exit_without_a_verdict_is_a_lost_driver_to_resume(setup):
    manager, ray, store = setup
    _summary(store, "RUNNING", trial_state="RUNNING")
    ray.status_value = ("FAILED", "Job entrypoint command failed with exit code -9")
    rec = reconcile_campaign(manager, manager.db.get("c-1"))
    assert rec.state == JobState.FAILED
    assert rec.message == ("campaign driver lost (Job entrypoint command failed with exit code -9). "
                           "Continue it with: orch resume c-1")
    status = campaign_status(rec)
    assert status["trials"][0]["state"] == "INTERRUPTED" and status["counts"]["running"] == 0
    assert rec.metrics["interrupted"] == 1


def test_a_failed_verdict_keeps_its_reason(setup):
    manager, ray, store = setup
    _summary(store, "FAILED", reason="1 of 8 trials failed: a_00003")
    ray.status_value = ("FAILED", "exit code 1")
    rec = reconcile_campaign(manager, manager.db.get("c-1"))
    assert rec.message == "1 of 8 trials failed: a_00003. Continue it with: orch resume c-1"


def test_succeeded_driver_without_successful_campaign_json_fails(setup):
    manager, ray, _ = setup
    ray.status_value = ("SUCCEEDED", "")
    rec = reconcile_campaign(manager, manager.db.get("c-1"))
    assert rec.state == JobState.FAILED and "without a successful campaign.json" in rec.message


def test_resume_relaunches_a_failed_campaign_as_a_new_ray_job(setup):
    manager, ray, _ = setup
    with pytest.raises(OrchError, match="only FAILED or CANCELLED campaigns can be resumed"):
        resume_campaign(manager, "c-1")
    ray.status_value = (None, "")  # Ray forgot the job: the local cluster was restarted
    assert reconcile_campaign(manager, manager.db.get("c-1")).state == JobState.FAILED
    rec = resume_campaign(manager, "c-1")
    assert rec.state == JobState.STARTING and rec.submissions == 2
    assert ray.submitted[-1][0] == "c-1-r2"
