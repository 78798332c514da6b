"""Refusals that need a live cluster to be judged: nothing is recorded or stored for them either."""

from __future__ import annotations

import pytest

from tests.control.test_bad_input import MLP, job_rows, stored_files, the_error

pytestmark = pytest.mark.e2e


def test_job_bigger_than_the_whole_cluster_is_refused(orch):
    proc = orch.run("submit", MLP, "--set", "scaling.num_workers=64", check=False)
    assert proc.returncode == 2
    message = the_error(proc.stderr)
    for phrase in ("needs 64 CPUs", "the whole cluster has 2 CPUs", "scaling.num_workers"):
        assert phrase in message, message
    assert job_rows(orch.home) == 0 and stored_files(orch.home) == []
