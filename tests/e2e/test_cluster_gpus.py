"""`orch cluster up --num-gpus N` offers N GPUs to jobs and says so; without the flag Ray counts this machine's GPUs
(the e2e session's own cluster starts that way), so GPU jobs can run on the embedded cluster of a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator.control.cluster_address import cluster_totals
from tests.e2e.conftest import REPO
from tests.embedded_clusters import stop_embedded_cluster

pytestmark = pytest.mark.e2e


def test_cluster_up_offers_the_gpus_it_is_told(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORCH_"))},
           "ORCH_HOME": str(tmp_path / "home"), "RAY_TMPDIR": tempfile.mkdtemp(prefix="orch-ray-", dir="/tmp")}

    def orch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                              capture_output=True, timeout=180)

    try:
        up = orch("cluster", "up", "--num-gpus", "2")
        assert up.returncode == 0, up.stderr
        assert "2 GPUs" in up.stdout
        info = json.loads(orch("cluster", "status", "--json").stdout)
        assert info["num_gpus"] == 2
        assert cluster_totals(info["dashboard_url"])["GPU"] == 2.0  # what the scheduler admits GPU jobs against
    finally:
        stop_embedded_cluster(tmp_path / "home", env)
