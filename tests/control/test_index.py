import sqlite3

import pytest

from orchestrator.control.index import JobIndex, JobRecord
from orchestrator.core.errors import NotFoundError, OrchError
from orchestrator.core.states import InvalidTransition, JobState


def _record(job_id: str, **kw) -> JobRecord:
    return JobRecord(id=job_id, name="n", state=JobState.QUEUED, storage_uri="file:///x", spec={"a": 1}, **kw)


def test_insert_get_list_in_submission_order(tmp_path):
    store = JobIndex(tmp_path / "jobs.db")
    for job_id in ("b", "a", "c"):
        store.insert(_record(job_id, cpus=2))
    assert [r.id for r in store.list()] == ["b", "a", "c"]
    got = store.get("a")
    assert (got.state, got.cpus, got.spec) == (JobState.QUEUED, 2, {"a": 1})
    with pytest.raises(NotFoundError, match="No job or campaign with id 'zz'"):
        store.get("zz")
    with pytest.raises(OrchError, match="already exists"):
        store.insert(_record("a"))


def test_transition_is_compare_and_set(tmp_path):
    store = JobIndex(tmp_path / "jobs.db")
    store.insert(_record("j"))
    assert store.transition("j", JobState.QUEUED, JobState.STARTING, submissions=1)
    # A second process that still believes the job is QUEUED must not launch it again.
    assert not store.transition("j", JobState.QUEUED, JobState.STARTING, submissions=1)
    assert store.get("j").submissions == 1
    with pytest.raises(InvalidTransition):
        store.transition("j", JobState.STARTING, JobState.STARTING)


def test_update_and_filters_and_wal(tmp_path):
    store = JobIndex(tmp_path / "jobs.db")
    store.insert(_record("j1"))
    store.insert(_record("c1", kind="campaign"))
    store.update("j1", metrics_json={"step": 3, "loss": 1.5}, attempts=2)
    rec = store.get("j1")
    assert rec.metrics == {"step": 3, "loss": 1.5} and rec.attempts == 2
    assert [r.id for r in store.list(kind="campaign")] == ["c1"]
    assert [r.id for r in store.list(states=[JobState.RUNNING])] == []
    with pytest.raises(ValueError):
        store.update("j1", state="RUNNING")
    mode = sqlite3.connect(tmp_path / "jobs.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_upsert_keeps_queue_position(tmp_path):
    store = JobIndex(tmp_path / "jobs.db")
    store.insert(_record("first"))
    store.insert(_record("second"))
    store.upsert(_record("first", message="rebuilt"))
    assert [r.id for r in store.list()] == ["first", "second"]
    assert store.get("first").message == "rebuilt"


def _open_and_insert(args: tuple[str, str]) -> str:
    path, job_id = args
    JobIndex(path).insert(_record(job_id))
    for _ in range(30):  # keep reopening while the others create, switch and write
        JobIndex(path).list()
    return job_id


def test_many_processes_opening_a_fresh_index_at_once_all_succeed(tmp_path):
    # Twenty `orch submit`s on a fresh ORCH_HOME race to create the file and switch it to WAL.
    import multiprocessing

    path = str(tmp_path / "jobs.db")
    ids = [f"j{i:02d}" for i in range(20)]
    with multiprocessing.get_context("spawn").Pool(20) as pool:
        assert sorted(pool.map(_open_and_insert, [(path, i) for i in ids])) == ids
    assert sorted(r.id for r in JobIndex(path).list()) == ids
