"""Idle stop of the embedded cluster: the pure decision, its settings, and the cluster's own bookkeeping."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from orchestrator.control.idle import (
    DEFAULT_IDLE_STOP_S,
    default_idle_stop_s,
    describe_duration,
    idle_decision,
    parse_duration,
)
from orchestrator.control.local_cluster import LocalCluster, LocalClusterInfo, _pid_alive
from orchestrator.core.errors import OrchError


def test_idle_decision_stops_only_after_the_idle_time_with_nothing_running() -> None:
    assert idle_decision(now=1000, last_active=500, idle_stop_s=600, busy=False).stop is False
    assert idle_decision(now=1000, last_active=500, idle_stop_s=600, busy=False).stop_at == 1100
    assert idle_decision(now=1100, last_active=500, idle_stop_s=600, busy=False).stop is True
    # busy or switched off: never, and no time to announce
    assert idle_decision(now=10**9, last_active=0, idle_stop_s=600, busy=True) == idle_decision(0, 0, 0, False)
    assert idle_decision(now=10**9, last_active=0, idle_stop_s=0, busy=False).stop is False
    assert idle_decision(now=10**9, last_active=0, idle_stop_s=0, busy=False).stop_at is None


@pytest.mark.parametrize(("text", "seconds"), [("900", 900), ("90s", 90), ("15m", 900), ("1.5h", 5400),
                                               ("2d", 172800), ("0", 0), (" 10 min ", 600)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "--idle-stop") == seconds


@pytest.mark.parametrize("text", ["", "-5", "soon", "10 parsecs", "1e3"])
def test_parse_duration_refuses_naming_the_option(text: str) -> None:
    with pytest.raises(OrchError, match="--idle-stop"):
        parse_duration(text, "--idle-stop")


def test_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_IDLE_STOP_S", raising=False)
    assert default_idle_stop_s() == DEFAULT_IDLE_STOP_S == 900
    monkeypatch.setenv("ORCH_IDLE_STOP_S", "20s")
    assert default_idle_stop_s() == 20
    monkeypatch.setenv("ORCH_IDLE_STOP_S", "never")
    with pytest.raises(OrchError, match="ORCH_IDLE_STOP_S"):
        default_idle_stop_s()


def test_describe_duration() -> None:
    assert [describe_duration(s) for s in (900, 90, 3600, 0, 3725)] == ["15m", "1m30s", "1h", "0s", "1h2m5s"]


@pytest.fixture
def fake_head(tmp_path):
    """A process standing in for `ray start --block` (own session, as the real one), so stopping it is safe."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "ray.scripts.scripts", "start",
                             "--head", "--port", "2"], start_new_session=True)
    local = LocalCluster(tmp_path)
    local.dir.mkdir(parents=True)
    yield local, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _write(local: LocalCluster, info: LocalClusterInfo) -> None:
    local.state_file.write_text(json.dumps(info.__dict__))
    with open(local.history_file, "a") as fh:
        fh.write(info.dashboard_url + "\n")


def test_state_file_from_before_idle_stop_still_reads(fake_head) -> None:
    local, proc = fake_head
    local.state_file.write_text(json.dumps({"dashboard_url": "http://127.0.0.1:1", "gcs_address": "127.0.0.1:2",
                                            "pid": proc.pid, "num_cpus": 2, "num_gpus": 0, "log_file": "x"}))
    info = local.info()
    assert info is not None and info.idle_stop_s == 0  # such a cluster was started to run until stopped
    assert local.last_active(info) == pytest.approx(local.state_file.stat().st_mtime)


def test_down_marks_the_address_stopped_on_purpose_and_respects_a_busy_veto(fake_head) -> None:
    local, proc = fake_head
    info = LocalClusterInfo("http://127.0.0.1:1", "127.0.0.1:2", proc.pid, 2, 0, "x", 60.0, time.time())
    _write(local, info)
    assert local.down(still_idle=lambda current: False) is False  # in use: nothing stopped
    assert _pid_alive(proc.pid) and not local.stopped_on_purpose(info.dashboard_url)
    local.touch_activity()
    assert local.last_active(info) >= info.started_at
    assert local.down(still_idle=lambda current: current.pid == proc.pid) is True
    proc.wait(timeout=10)
    assert local.info() is None
    assert local.stopped_on_purpose(info.dashboard_url)
    assert not local.stopped_on_purpose("http://127.0.0.1:3")
