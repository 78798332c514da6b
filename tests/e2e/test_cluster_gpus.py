"""`orch cluster up --num-gpus N` offers N GPUs to jobs and says so; without the flag Ray counts this machine's GPUs
(the e2e session's own cluster starts that way), so GPU jobs can run on the embedded cluster of a GPU machine."""

from __future__ import annotations

import json

import pytest

from orchestrator.control.cluster_address import cluster_totals
from tests.e2e.conftest import Orch

pytestmark = pytest.mark.e2e


def test_cluster_up_offers_the_gpus_it_is_told(own_cluster_orch: Orch) -> None:
    up = own_cluster_orch.run("cluster", "up", "--num-gpus", "2", timeout=180)
    assert "2 GPUs" in up.stdout
    info = json.loads(own_cluster_orch.run("cluster", "status", "--json").stdout)
    assert info["num_gpus"] == 2
    assert cluster_totals(info["dashboard_url"])["GPU"] == 2.0  # what the scheduler admits GPU jobs against
