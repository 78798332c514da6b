"""`orch ui` in headless Chromium: the page loads, its curves grow while a job reports, campaigns show their
leaderboard, and the server only reads.

The job here is an index record whose metrics.jsonl a thread extends the way a running job's rank 0 does;
tests/e2e/test_sdk.py watches a real job the same way.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.control.index import JobIndex, JobRecord
from orchestrator.core.states import JobState
from orchestrator.storage import open_store
from tests.chromium import assert_not_blank, chromium, dump_url, screenshot_url
from tests.paths import REPO_ROOT


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def ui(home: Path) -> Iterator[str]:
    """`orch ui --port 0` for this home; yields its URL; stops exactly that process."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}, "ORCH_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", "0"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # the address is its first line on stdout
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _store(home: Path, key: str):
    return open_store((home / "storage" / key).as_uri())


def _running_job(home: Path) -> tuple[JobIndex, object]:
    store = _store(home, "jobs/live-1")
    index = JobIndex(home / "jobs.db")
    index.insert(JobRecord(id="live-1", name="live", state=JobState.RUNNING, storage_uri=store.uri,
                           spec={"train": {"steps": 24}}))
    return index, store


def _report(store, index: JobIndex, steps: int, every_s: float) -> threading.Thread:
    """Rank 0's reports: a row every `every_s`, the whole file rewritten each time; then the job ends."""
    def run() -> None:
        rows = []
        for step in range(1, steps + 1):
            rows.append({"step": step, "loss": 3.0 / step, "samples_per_s": 90.0 + step})
            store.put_bytes("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
            time.sleep(every_s)
        index.transition("live-1", JobState.RUNNING, JobState.SUCCEEDED)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_page_loads_and_its_curves_grow_while_the_job_runs(home: Path, ui: str, tmp_path: Path):
    chromium()  # before any work: without a browser this test is skipped, never passed
    index, store = _running_job(home)
    writer = _report(store, index, steps=24, every_s=0.4)
    # One page load, kept open while the job reports: each long poll brings the rows written meanwhile.
    dom = dump_url(f"{ui}#job=live-1", virtual_time_ms=4000)
    writer.join(timeout=60)
    history = [int(n) for n in re.search(r'data-row-history="([\d,]+)"', dom).group(1).split(",")]
    assert len(history) >= 3 and history == sorted(history) and len(set(history)) == len(history)
    assert history[0] < 24 and history[-1] == 24  # drawn before the end, redrawn as rows came, complete at the end
    assert re.search(r'<svg [^>]*id="chart-loss"[^>]*data-points="24"', dom)
    assert re.search(r'<svg [^>]*id="chart-throughput"[^>]*data-points="24"', dom)
    assert '<polyline points="' in dom and 'data-series="samples_per_s"' in dom
    assert '<td class="SUCCEEDED">SUCCEEDED</td>' in dom or ">live-1<" in dom
    screenshot_url(f"{ui}#job=live-1", tmp_path / "shot.png")
    assert_not_blank(tmp_path / "shot.png")


def test_a_campaign_shows_its_leaderboard_and_one_curve_per_trial(home: Path, ui: str):
    chromium()
    store = _store(home, "campaigns/sweep-1")
    trials = []
    for i in range(3):
        store.put_bytes(f"trials/t{i}/metrics.jsonl", "".join(
            json.dumps({"step": s, "eval_loss": 3.0 - 0.1 * s + i}) + "\n" for s in (5, 10, 15)).encode())
        store.put_bytes(f"trials/t{i}/spec.yaml", b"name: sweep\n")
        trials.append({"id": f"t{i}", "state": "SUCCEEDED", "config": {"train.lr": 10.0 ** -(i + 2)},
                       "last_metric": 1.5 + i, "last_metric_step": 15, "steps": 15, "early_stopped": False})
    store.put_bytes("campaign.json", json.dumps({
        "metric": "eval_loss", "mode": "min", "trials": trials, "counts": {"total": 3, "succeeded": 3},
        "best_trial": {"id": "t0", "value": 1.5}}).encode())
    JobIndex(home / "jobs.db").insert(JobRecord(id="sweep-1", name="sweep", kind="campaign",
                                                state=JobState.SUCCEEDED, storage_uri=store.uri,
                                                spec={"campaign": {"metric": "eval_loss", "mode": "min"}}))
    dom = dump_url(f"{ui}#job=sweep-1", virtual_time_ms=3000)
    assert re.search(r'<svg [^>]*id="chart-metric"[^>]*data-points="9"', dom)
    assert all(f'data-series="t{i}"' in dom for i in range(3))
    board = dom[dom.index('id="leaderboard"'):]
    assert [m for m in re.findall(r"<td>(t\d)</td>", board)] == ["t0", "t1", "t2"]
    assert "train.lr" in board


def test_the_server_only_reads_and_answers_unknown_ids_with_404(home: Path, ui: str):
    _running_job(home)
    with urllib.request.urlopen(f"{ui}api/jobs") as answer:
        assert [j["id"] for j in json.loads(answer.read())] == ["live-1"]
    with urllib.request.urlopen(f"{ui}api/jobs/live-1/metrics?after=-1&wait=0") as answer:
        assert json.loads(answer.read()) == {"rows": [], "state": "RUNNING"}
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{ui}api/jobs/nope-1")
    assert missing.value.code == 404 and "nope-1" in json.loads(missing.value.read())["error"]
    with pytest.raises(urllib.error.HTTPError) as post:
        urllib.request.urlopen(urllib.request.Request(f"{ui}api/jobs", data=b"{}", method="POST"))
    assert post.value.code == 501  # no handler for anything but GET
    with urllib.request.urlopen(ui) as answer:
        assert answer.headers["X-Frame-Options"] == "DENY" and b"<title>orch</title>" in answer.read()
