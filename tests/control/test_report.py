"""`orch report` on stored results (a job and a campaign), rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.control.index import JobIndex, JobRecord
from orchestrator.core.states import JobState
from orchestrator.storage import open_store
from tests.chromium import assert_not_blank, chromium, render
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
SPEC = {"name": "demo", "workload": "gpt", "model": {"n_layer": 2}, "train": {"steps": 30},
        "deepspeed": {"zero_stage": 3}, "scaling": {"num_workers": 2}}


def _lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _job(home: Path) -> str:
    store = open_store((home / "storage" / "jobs" / "demo-1").as_uri())
    rows = [{"step": s, "loss": 5.5 - 0.1 * s, "lr": 1e-3, "grad_norm": 2.0 / s, "tokens_per_s": 5000.0 + s,
             "step_time_s": 0.2} for s in range(1, 31, 3)]
    rows += [{"step": 30, "eval_loss": 2.9, "loss": 2.6}, {"step": 30, "final": True, "final_loss": 2.6}]
    store.put_bytes("metrics.jsonl", _lines(rows))
    store.put_bytes("result.json", json.dumps({"status": "SUCCEEDED", "final_metrics": rows[-1]}).encode())
    store.put_bytes("attempts/attempt-0001.json", json.dumps({"attempt": 1, "started_at": "t0",
                                                             "restored_step": 0}).encode())
    store.put_bytes("workers/rank-00000.json", json.dumps({"rank": 0, "memory": {
        "params": 241152, "grads": 482304, "master": 241152, "optimizer_states": 482304,
        "model_states": 1446912, "peak_rss": 5 * 2**20}}).encode())
    JobIndex(home / "jobs.db").insert(JobRecord(id="demo-1", name="demo", state=JobState.SUCCEEDED,
                                                storage_uri=store.uri, spec=SPEC))
    return store.uri


def _campaign(home: Path) -> str:
    store = open_store((home / "storage" / "campaigns" / "sweep-1").as_uri())
    board = [{"rank": i + 1, "id": f"t{i}", "state": "SUCCEEDED", "value": 3.0 + i, "step": 20,
              "config": {"train.lr": 10.0 ** -(i + 2)}} for i in range(3)]
    for i in range(3):
        store.put_bytes(f"trials/t{i}/metrics.jsonl",
                        _lines([{"step": s, "eval_loss": 5.0 - s * 0.1 + i} for s in (5, 10, 15, 20)]))
    store.put_bytes("leaderboard.json", json.dumps(board).encode())
    store.put_bytes("campaign.json", json.dumps({"metric": "eval_loss", "mode": "min",
                                                 "best_trial": {"id": "t0", "value": 3.0}}).encode())
    JobIndex(home / "jobs.db").insert(JobRecord(id="sweep-1", name="sweep", kind="campaign",
                                                state=JobState.SUCCEEDED, storage_uri=store.uri,
                                                spec={"metric": "eval_loss"}))
    return store.uri


def _report(home: Path, record: str, out: Path) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}, "ORCH_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "orchestrator", "report", record, "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def _data_uri_images(dom: str) -> list[str]:
    return re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', dom)


def test_job_report_is_stored_and_renders_with_its_plots(tmp_path):
    chromium()  # before any work: without a browser this test is skipped, never passed
    home = tmp_path / "home"
    uri = _job(home)
    proc = _report(home, "demo-1", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "out" / "report.html"
    assert proc.stdout.strip() == str(page)
    stored = Path(uri.removeprefix("file://"))
    assert (stored / "report.html").read_text() == page.read_text()
    assert {p.name for p in (stored / "report").iterdir()} == {"loss.png", "throughput.png", "optimizer.png"}
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"loss.png", "throughput.png", "optimizer.png"}
    assert "http://" not in page.read_text() and "<script" not in page.read_text()  # self-contained

    dom = render(page, tmp_path / "shot.png")
    assert _data_uri_images(dom) == ["loss.png", "throughput.png", "optimizer.png"]
    for text in ("SUCCEEDED", "Checkpoints", "Attempts", "Memory per worker", "zero_stage: 3", "rank 0"):
        assert text in dom
    assert_not_blank(tmp_path / "shot.png")


def test_campaign_report_has_leaderboard_and_metric_plot(tmp_path):
    chromium()
    home = tmp_path / "home"
    uri = _campaign(home)
    proc = _report(home, "sweep-1", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    dom = render(tmp_path / "out" / "report.html", tmp_path / "shot.png")
    assert _data_uri_images(dom) == ["metric_vs_step.png"]
    assert "Leaderboard" in dom and all(f"<td>t{i}</td>" in dom for i in range(3))
    assert (Path(uri.removeprefix("file://")) / "report" / "metric_vs_step.png").is_file()
    assert_not_blank(tmp_path / "shot.png")


def test_report_of_unknown_job_is_one_paragraph(tmp_path):
    proc = _report(tmp_path, "nope", tmp_path / "out")
    assert proc.returncode == 3 and "No job or campaign with id 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad_out", ["/proc/orch-report"])
def test_report_to_unwritable_dir_is_one_paragraph(tmp_path, bad_out):
    home = tmp_path / "home"
    _job(home)
    proc = _report(home, "demo-1", Path(bad_out))
    assert proc.returncode == 2 and "--out /proc/orch-report" in proc.stderr and "Traceback" not in proc.stderr
