"""`resume(job, overrides)`: a job continues on another worker count; the record, its stored spec and the
resources it holds follow, and a change the checkpoint cannot follow is refused with nothing changed."""

from __future__ import annotations

import pytest

from orchestrator.core.errors import OrchError, SpecError
from orchestrator.core.run import read_spec
from orchestrator.core.states import JobState
from orchestrator.storage import open_store
from tests.control.test_manager import URL, _spec, manager  # noqa: F401  (fixture)


def _cancelled(mgr, name: str):
    rec = mgr.submit(_spec(name, workers=2))
    mgr._ray[URL].statuses[rec.id] = "RUNNING"
    mgr.tick()
    return mgr.cancel(rec.id)


def test_resume_on_one_worker_updates_record_stored_spec_and_resources(manager) -> None:  # noqa: F811
    rec = _cancelled(manager, "shrink")
    assert rec.state == JobState.CANCELLED and rec.cpus == 2
    resumed = manager.resume(rec.id, ["scaling.num_workers=1"])
    assert resumed.state == JobState.STARTING and resumed.cpus == 1
    assert resumed.spec["scaling"]["num_workers"] == 1
    assert resumed.spec["deepspeed"]["gradient_accumulation_steps"] == 2
    stored = read_spec(open_store(resumed.storage_uri))
    assert stored["scaling"]["num_workers"] == 1 and stored["deepspeed"]["gradient_accumulation_steps"] == 2


def test_a_change_resume_cannot_make_is_refused_and_nothing_changes(manager) -> None:  # noqa: F811
    rec = _cancelled(manager, "refused")
    with pytest.raises(SpecError, match="'train.lr' cannot change on resume"):
        manager.resume(rec.id, ["train.lr=0.5"])
    with pytest.raises(OrchError, match="scaling.num_workers"):
        manager.resume(rec.id, ["scaling.num_workers=8"])  # more than the cluster's 2 CPUs
    after = manager.db.get(rec.id)
    assert after.state == JobState.CANCELLED and after.spec["scaling"]["num_workers"] == 2
    assert read_spec(open_store(after.storage_uri))["scaling"]["num_workers"] == 2


def test_cli_resume_refuses_a_change_with_exit_2_and_no_traceback(manager, capsys) -> None:  # noqa: F811
    from orchestrator.control import cli

    rec = _cancelled(manager, "cli")
    capsys.readouterr()
    assert cli.main(["resume", rec.id, "--set", "model.n_layer=8"]) == 2
    err = capsys.readouterr().err
    assert "--set 'model.n_layer' cannot change on resume" in " ".join(err.split()) and "Traceback" not in err
    assert manager.db.get(rec.id).state == JobState.CANCELLED
