"""Issue 15: a job submitted the moment a fresh Ray head is up succeeds. A head that has just started answers
`500: No available agent to submit job, please try again later` until its job agent registers; `orch` retries
that (and 5xx, dropped connections) instead of failing the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import EXTENSIONS_CACHE, REPO

pytestmark = pytest.mark.e2e


def test_a_job_submitted_right_as_a_fresh_head_starts_succeeds(tmp_path: Path) -> None:
    home = tmp_path / "orch-home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORCH_"))},
        "ORCH_HOME": str(home), "RAY_TMPDIR": tempfile.mkdtemp(prefix="orch-ray-", dir="/tmp"),
        "TORCH_EXTENSIONS_DIR": str(EXTENSIONS_CACHE), "PYTHONUNBUFFERED": "1", "ORCH_RAY_RETRY_S": "90",
    }

    def orch(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                              capture_output=True, timeout=timeout)

    try:
        # No cluster runs for this ORCH_HOME: `orch submit` starts the embedded head and submits at once.
        proc = orch("submit", str(REPO / "jobs/examples/mlp-digits.yaml"), "--set", "train.steps=20",
                    "--set", "scaling.num_workers=1", "--set", "train.eval_every=0", "--set",
                    "checkpoint.every_steps=20", "--wait", timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "FAILED" not in proc.stderr, proc.stderr
        job_id = proc.stdout.strip().splitlines()[-1]
        status = json.loads(orch("status", job_id, "--json", timeout=120).stdout)
        assert status["state"] == "SUCCEEDED" and status["attempts"] == 1, status
        assert status["metrics"]["step"] == 20
    finally:
        orch("cluster", "down", "--cancel", timeout=120)
    assert not (home / "cluster" / "cluster.json").exists()
