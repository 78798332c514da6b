"""Inputs that used to end in a traceback, a hang or a wedged queue: each is refused with one paragraph (exit 2)
or isolated to the one job it concerns."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import orchestrator.control.manager as manager_module
from orchestrator.control import cli
from orchestrator.control.manager import JobManager
from orchestrator.core.spec import parse_spec
from orchestrator.core.states import JobState
from tests.control.test_bad_input import MLP, refused, write
from tests.control.test_manager import URL, FakeRay


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "orch-home"
    monkeypatch.setenv("ORCH_HOME", str(home))
    monkeypatch.delenv("ORCH_RAY_ADDRESS", raising=False)
    return home


# ---- YAML before any parsing work -------------------------------------------------------------------------
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))


def test_alias_bomb_is_refused_at_once(home, tmp_path, capsys):
    started = time.monotonic()
    refused(capsys, home, ["submit", write(tmp_path, "name: x\nworkload: mlp\nmodel:\n  " +
                                           BOMB.replace("\n", "\n  "))], "alias", "write the values out")
    assert time.monotonic() - started < 10


def test_duplicate_keys_are_refused(home, tmp_path, capsys):
    refused(capsys, home, ["submit", write(tmp_path, "name: x\nworkload: mlp\ntrain: {steps: 5}\n"
                                                     "train: {steps: 500}\n")], "'train' appears twice")


def test_huge_spec_is_refused_before_reading(home, tmp_path, capsys):
    refused(capsys, home, ["submit", write(tmp_path, "name: x\nworkload: mlp\n#" + "x" * 300_000 + "\n")],
            "bytes, more than")


def test_directory_and_fifo_given_as_the_spec(home, tmp_path, capsys):
    refused(capsys, home, ["submit", str(tmp_path)], "is not a regular file")
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    refused(capsys, home, ["submit", str(fifo)], "is not a regular file")  # and does not block reading it


# ---- spec values accepted before but wrong ----------------------------------------------------------------
@pytest.mark.parametrize("override, phrases", [
    ("deepspeed.config={gradient_clipping: .nan}", ("deepspeed.config.gradient_clipping", "finite")),
    ("deepspeed.config={optimizer: {params: {lr: .inf}}}", ("deepspeed.config.optimizer.params.lr", "finite")),
    ("train.steps=" + "9" * 400, ("field 'train.steps'", "less than or equal")),
    ("train.seed=" + "1" * 26, ("field 'train.seed'", "less than or equal")),
    ("train.steps=true", ("field 'train.steps'", "not a boolean")),
    ("scaling.num_workers=true", ("field 'scaling.num_workers'", "not a boolean")),
    ("checkpoint.keep_latest=false", ("field 'checkpoint.keep_latest'", "not a boolean")),
])
def test_values_that_only_failed_on_the_workers(home, capsys, override, phrases):
    refused(capsys, home, ["submit", MLP, "--set", override], *phrases)


def test_missing_working_dir_is_refused_at_submit(home, tmp_path, capsys):
    refused(capsys, home, ["submit", MLP, "--set", f"working_dir={tmp_path / 'nope'}"], "working_dir",
            "does not exist")


def test_workload_that_cannot_be_imported_is_refused(home, tmp_path, capsys):
    refused(capsys, home, ["submit", MLP, "--set", "workload=no.such.module:main"], "workload",
            "no.such.module")


def test_own_workload_resolves_from_its_working_dir_without_importing_it(tmp_path):
    from orchestrator.core.workload_check import check_workload_importable

    code = tmp_path / "src" / "mypkg"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "train.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\ndef main(ctx): ...\n")
    check_workload_importable("mypkg.train:main", str(tmp_path / "src"))
    assert not (tmp_path / "imported").exists()


def test_memory_per_worker_nan(home, capsys):
    refused(capsys, home, ["submit", MLP, "--memory-per-worker", "nan"], "--memory-per-worker", "positive")


# ---- the operator's own files -----------------------------------------------------------------------------
def test_orch_home_is_a_file(tmp_path, monkeypatch, capsys):
    not_a_dir = tmp_path / "home"
    not_a_dir.write_text("")
    monkeypatch.setenv("ORCH_HOME", str(not_a_dir))
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert "ORCH_HOME" in err and "Traceback" not in err


def test_corrupt_jobs_db(home, capsys):
    home.mkdir()
    (home / "jobs.db").write_bytes(b"this is not a database" * 100)
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert "jobs.db" in err and "orch sync" in err and "Traceback" not in err


# ---- export / predict arguments, checked before any work ---------------------------------------------------
@pytest.mark.parametrize("out, phrase", [("", "--out is empty"), ("DIR", "is a directory"),
                                         ("/dev/null", "not a regular file")])
def test_export_out_that_cannot_be_a_model_file(home, tmp_path, capsys, out, phrase):
    target = str(tmp_path) if out == "DIR" else out
    refused(capsys, home, ["export", "some-job", "--out", target], "--out", phrase)
    assert Path("/dev/null").is_char_device()


def test_trial_id_with_a_path(home, capsys):
    refused(capsys, home, ["export", "some-job", "--trial", "../x", "--out", "m.pt"], "--trial")


@pytest.mark.parametrize("content, phrase", [(None, "does not exist"), (b"not numpy", "not a .npy array")])
def test_predict_input_errors(home, tmp_path, capsys, content, phrase):
    path = tmp_path / "x.npy"
    if content is not None:
        path.write_bytes(content)
    refused(capsys, home, ["predict", "some-job", "--input", str(path)], "--input", phrase)


# ---- one job's failure to launch is that job's, not the queue's -------------------------------------------
def test_an_exception_handing_one_job_to_ray_fails_only_that_job(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(manager_module, "cluster_totals", lambda url: {"CPU": 2.0, "GPU": 0.0})
    mgr = JobManager(address=URL)
    mgr._shares_machine[URL] = True
    mgr._ray[URL] = FakeRay()
    real = manager_module.driver_entrypoint

    def entrypoint(module, flag, job_id, storage_uri, same_machine):
        if job_id.startswith("bad-"):
            raise ValueError("working_dir vanished")  # what Ray raises for a directory removed after submit
        return real(module, flag, job_id, storage_uri, same_machine)

    monkeypatch.setattr(manager_module, "driver_entrypoint", entrypoint)
    bad = mgr.submit(parse_spec({"name": "bad", "workload": "mlp", "scaling": {"num_workers": 1}}))
    good = mgr.submit(parse_spec({"name": "good", "workload": "mlp", "scaling": {"num_workers": 1}}))
    assert mgr.db.get(bad.id).state == JobState.FAILED
    assert "working_dir vanished" in mgr.db.get(bad.id).message
    assert mgr.db.get(good.id).state == JobState.STARTING
    assert cli.main(["list"]) == 0


def test_tick_isolates_records(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(manager_module, "cluster_totals", lambda url: {"CPU": 2.0, "GPU": 0.0})
    mgr = JobManager(address=URL)
    mgr._shares_machine[URL] = True
    mgr._ray[URL] = FakeRay()
    first = mgr.submit(parse_spec({"name": "a", "workload": "mlp", "scaling": {"num_workers": 1}}))
    second = mgr.submit(parse_spec({"name": "b", "workload": "mlp", "scaling": {"num_workers": 1}}))
    real = mgr.reconcile

    def reconcile(rec):
        if rec.id == first.id:
            raise sqlite3.OperationalError("one bad record")
        return real(rec)

    monkeypatch.setattr(mgr, "reconcile", reconcile)
    mgr._ray[URL].statuses[second.id] = "RUNNING"
    mgr.tick()
    assert mgr.db.get(second.id).state == JobState.RUNNING


# ---- cluster down only stops its own Ray head -------------------------------------------------------------
def test_cluster_down_never_kills_a_pid_that_is_not_its_ray_head(home, capsys):
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        (home / "cluster").mkdir(parents=True)
        (home / "cluster" / "cluster.json").write_text(json.dumps({
            "dashboard_url": "http://127.0.0.1:9", "gcs_address": "127.0.0.1:9", "pid": victim.pid,
            "num_cpus": 1, "num_gpus": 0, "log_file": "x"}))
        cli.main(["cluster", "down"])
        capsys.readouterr()
        with pytest.raises(subprocess.TimeoutExpired):  # a SIGTERM sent by down would end it at once
            victim.wait(timeout=2)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()


def test_jobs_db_is_readable_by_its_owner_only(home):
    home.mkdir()
    (home / "jobs.db").touch(mode=0o644)  # also an index created by an older version
    JobManager()
    assert (home / "jobs.db").stat().st_mode & 0o777 == 0o600
