"""`orch cluster down` and idle stop against a fake Ray: refuse while in use, cancel on request, never resubmit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

import orchestrator.control.manager as manager_module
from orchestrator.control.cluster_ops import stop_if_idle, stop_local_cluster
from orchestrator.control.local_cluster import LocalClusterInfo
from orchestrator.control.manager import JobManager, ray_submission_id
from orchestrator.core.errors import OrchError
from orchestrator.core.states import JobState
from tests.control.test_manager import URL, FakeRay, _spec


class ListingRay(FakeRay):
    """FakeRay that also answers the Jobs API's list_jobs, as cluster_ops asks it."""

    def __init__(self) -> None:
        super().__init__()
        self.foreign: list[str] = []
        self.client = SimpleNamespace(list_jobs=self._list)

    def _list(self):
        running = [sid for sid, st in self.statuses.items() if st in ("PENDING", "RUNNING")] + self.foreign
        return [SimpleNamespace(submission_id=sid, job_id=None, status=SimpleNamespace(value="RUNNING"))
                for sid in running]


@pytest.fixture
def embedded(tmp_path, monkeypatch):
    """A manager whose embedded cluster is a stand-in process of our own (own session), at URL."""
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(manager_module, "cluster_totals", lambda url: {"CPU": 2.0, "GPU": 0.0})
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "ray.scripts.scripts", "start",
                             "--head", "--port", "2"], start_new_session=True)
    mgr = JobManager()
    mgr.local.dir.mkdir(parents=True)
    info = LocalClusterInfo(URL, "127.0.0.1:2", proc.pid, 2, 0, "x", 60.0, time.time())
    mgr.local.state_file.write_text(json.dumps(info.__dict__))
    mgr.local.history_file.write_text(URL + "\n")
    mgr._shares_machine[URL] = True
    mgr._ray[URL] = ListingRay()
    yield mgr, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_down_refuses_while_a_job_runs_and_lists_it(embedded) -> None:
    mgr, proc = embedded
    rec = mgr.submit(_spec("busy"))
    mgr._ray[URL].foreign.append("someone-elses-job")
    with pytest.raises(OrchError, match=rf"{rec.id} \(job, STARTING\).*someone-elses-job.*--cancel") as exc:
        stop_local_cluster(mgr, cancel=False)
    assert exc.value.exit_code == 2
    assert proc.poll() is None and mgr.db.get(rec.id).state == JobState.STARTING


def test_down_cancel_cancels_first_and_nothing_resubmits_later(embedded) -> None:
    mgr, proc = embedded
    running = mgr.submit(_spec("running", restarts=3))
    queued = mgr.submit(_spec("queued"))  # does not fit next to the first: stays QUEUED
    assert mgr.db.get(queued.id).state == JobState.QUEUED
    cancelled = stop_local_cluster(mgr, cancel=True)
    assert {r.id for r in cancelled} == {running.id, queued.id}
    assert proc.wait(timeout=10) is not None and mgr.local.info() is None
    mgr._ray[URL].statuses[ray_submission_id(running)] = "FAILED"  # what a dying cluster may report
    for _ in range(3):
        mgr.tick()
    for rec in (running, queued):
        after = mgr.db.get(rec.id)
        assert (after.state, after.message, after.submissions) == (JobState.CANCELLED, "cluster stopped",
                                                                   rec.submissions)


def test_a_job_launched_as_its_cluster_stopped_is_cancelled_not_resubmitted(embedded) -> None:
    mgr, proc = embedded
    rec = mgr.submit(_spec("racing", restarts=3))
    mgr.local.down()  # stopped on purpose without going through cluster_ops (a launch raced the stop)
    mgr._ray[URL].statuses[ray_submission_id(rec)] = "FAILED"
    mgr.tick()
    after = mgr.db.get(rec.id)
    assert (after.state, after.message, after.submissions) == (JobState.CANCELLED, "cluster stopped", 1)


def test_idle_stop_waits_for_idle_time_and_for_every_job(embedded, monkeypatch) -> None:
    mgr, proc = embedded
    info = mgr.local.info()
    assert not stop_if_idle(mgr, info)  # just started
    monkeypatch.setattr(mgr.local, "last_active", lambda info: time.time() - 3600)
    mgr._ray[URL].foreign.append("another-homes-job")
    assert not stop_if_idle(mgr, info) and proc.poll() is None  # Ray still runs someone's job
    mgr._ray[URL].foreign.clear()
    assert stop_if_idle(mgr, info)
    assert proc.wait(timeout=10) is not None and mgr.local.stopped_on_purpose(URL)
