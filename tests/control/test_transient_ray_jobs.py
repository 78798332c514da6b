"""A transient Ray error never decides a job's state: the manager against Ray's real client and a real HTTP
server on 127.0.0.1 that keeps answering 'try again later' or 5xx."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import orchestrator.control.manager as manager_module
from orchestrator.control.local_cluster import LocalClusterInfo
from orchestrator.control.manager import JobManager
from orchestrator.core.spec import parse_spec
from orchestrator.core.states import JobState
from tests.control.test_ray_retry import TRY_AGAIN, _fast_budget, flaky  # noqa: F401  (fixtures)


def _spec(name: str):
    return parse_spec({"name": name, "workload": "mlp", "scaling": {"num_workers": 1},
                       "failure": {"max_restarts": 2}})


@pytest.fixture
def manager(flaky, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORCH_RAY_RETRY_S", "1")
    monkeypatch.setattr(manager_module, "cluster_totals", lambda url: {"CPU": 2.0, "GPU": 0.0})
    mgr = JobManager(address=flaky.url)
    mgr._shares_machine[flaky.url] = True
    return mgr


def test_a_submission_ray_keeps_refusing_for_now_stays_queued_then_starts(manager, flaky) -> None:  # noqa: F811
    flaky.failures["submit"] = [(500, TRY_AGAIN)] * 1000
    rec = manager.submit(_spec("early"))
    assert rec.state == JobState.QUEUED and rec.submissions == 0
    assert "waiting for Ray to accept it: Ray answered 'try again later'" in rec.message
    flaky.failures["submit"] = []
    manager.ray_for(flaky.url)._down = False  # a later command starts with a fresh client
    manager.tick()
    after = manager.db.get(rec.id)
    assert after.state == JobState.STARTING and after.submissions == 1
    assert len(flaky.submitted) == 1


def test_status_polls_that_keep_failing_leave_the_job_running(manager, flaky) -> None:  # noqa: F811
    rec = manager.submit(_spec("steady"))
    manager.tick()
    assert manager.db.get(rec.id).state == JobState.RUNNING  # the server says RUNNING
    flaky.failures["info"] = [(503, "Service Unavailable")] * 1000
    for _ in range(2):
        manager.tick()
    assert manager.db.get(rec.id).state == JobState.RUNNING


def test_on_the_embedded_cluster_still_running_a_failing_poll_is_no_verdict(manager, flaky) -> None:  # noqa: F811
    # Stands in for this home's Ray head: a process group leader whose command line is a head's on port 2
    # (local_cluster only trusts cluster.json's pid when it is).
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "ray.scripts.scripts", "--head",
                             "--port", "2"], start_new_session=True)
    try:
        local = manager.local
        local.dir.mkdir(parents=True, exist_ok=True)
        info = LocalClusterInfo(flaky.url, "127.0.0.1:2", proc.pid, 2, 0, "x", 0.0, time.time())
        local.state_file.write_text(json.dumps(info.__dict__))
        local.history_file.write_text(flaky.url + "\n")
        rec = manager.submit(_spec("embedded"))
        manager.tick()
        flaky.failures["info"] = [(500, TRY_AGAIN)] * 1000
        manager.tick()
        assert manager.db.get(rec.id).state == JobState.RUNNING  # not lost, not resubmitted
        assert manager.db.get(rec.id).submissions == 1
        proc.kill()
        proc.wait()
        manager.tick()  # now the cluster is really gone: its driver is lost with it, and the job resubmitted
        assert manager.db.get(rec.id).submissions == 2
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
