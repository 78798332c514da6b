"""Ids are never cut short in tables, even in an 80-column terminal: they are what users copy."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from orchestrator.control.cli.tables import print_id_table
from orchestrator.control.index import JobIndex, JobRecord
from orchestrator.core.states import JobState
from tests.paths import REPO_ROOT

LONG_IDS = ["gpt-zero3-pretraining-20261204-211538-d9a303bd", "tune-mlp-asha-20261204-211538-0a1b2c3d"]
HEADERS = ["ID", "KIND", "STATE", "STEP", "LOSS", "ATTEMPTS", "CREATED"]
ROWS = [[i, "campaign", "[green]SUCCEEDED[/]", "120", "0.1234", "1", "2026-12-04T21:15:38Z"] for i in LONG_IDS]


def _render(width: int, **kw: object) -> str:
    text = io.StringIO()
    print_id_table(Console(file=text, width=width, color_system=None), HEADERS, "ID", ROWS, **kw)  # type: ignore[arg-type]
    return text.getvalue()


def test_in_80_columns_low_priority_columns_make_room_and_are_named():
    text = _render(80, droppable=["CREATED", "ATTEMPTS", "KIND"])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    for job_id in LONG_IDS:
        assert any(job_id in line for line in lines), text
    assert "…" not in text and "2026-12-04" not in text  # CREATED went, nothing was cut with an ellipsis
    assert "SUCCEEDED" in text and "0.1234" in text  # the rest is whole, unfolded
    assert "(CREATED, ATTEMPTS, KIND hidden to fit 80 columns; --json shows every field)" in text


def test_only_as_many_columns_go_as_needed():
    text = _render(100, droppable=["CREATED", "ATTEMPTS"])
    assert "ATTEMPTS" in text and "(CREATED hidden to fit 100 columns" in text


def test_a_wide_terminal_shows_every_column_and_no_note():
    text = _render(160, droppable=["CREATED", "ATTEMPTS"])
    assert "2026-12-04T21:15:38Z" in text and "hidden" not in text
    assert all(h in text for h in HEADERS)


def test_columns_that_cannot_be_dropped_fold_and_the_id_stays_whole():
    text = _render(64, droppable=["CREATED", "ATTEMPTS", "KIND", "LOSS"])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 64 and "…" not in text
    for job_id in LONG_IDS:
        assert any(job_id in line for line in lines), text
    assert "SUCC" in text and "120" in text  # STATE folded into the room left, still there


def test_an_id_longer_than_the_terminal_folds_onto_the_next_line_whole():
    text = io.StringIO()
    print_id_table(Console(file=text, width=30, color_system=None), ["ID", "STATE"], "ID", [[LONG_IDS[0], "OK"]])
    assert LONG_IDS[0] in "".join(line.strip().split(" ")[0] for line in text.getvalue().splitlines())
    assert "…" not in text.getvalue()


def test_orch_list_in_an_80_column_terminal_prints_every_id_whole(tmp_path: Path):
    home = tmp_path / "orch-home"
    index = JobIndex(home / "jobs.db")
    for job_id in LONG_IDS:
        index.insert(JobRecord(id=job_id, name="n", state=JobState.SUCCEEDED, storage_uri="file:///x", spec={},
                               metrics={"step": 120, "loss": 0.25}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "list"], cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=120, env={**env, "ORCH_HOME": str(home), "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in proc.stdout
    for job_id in LONG_IDS:
        assert any(job_id in line for line in lines), proc.stdout
    assert "SUCCEEDED" in proc.stdout and "0.25" in proc.stdout
