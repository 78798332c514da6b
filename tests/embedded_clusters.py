"""No test leaves an embedded Ray cluster behind.

A test whose ORCH_HOME lies in its pytest tmp dir and that starts the embedded cluster there (`orch cluster up`, or
a submit without an address) must stop it when it ends: once pytest removes old tmp dirs, cluster.json is gone and
nothing can find that Ray head to stop it any more. Tests stop their own clusters in finalizers; this plugin is the
backstop for any test that did not (or failed before it could): after each test it looks for cluster.json files
under the test's tmp_path and stops each head that still runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.control.local_cluster import LocalClusterInfo, _is_ray_head
from tests.paths import REPO_ROOT


def _head_info(home: Path) -> LocalClusterInfo | None:
    try:
        return LocalClusterInfo(**json.loads((home / "cluster" / "cluster.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def stop_embedded_cluster(home: Path, env: dict[str, str] | None = None) -> None:
    """Stop the embedded cluster of ORCH_HOME `home` (cancelling its jobs), then its head's process group if
    `cluster down` left it running. Only a process that really is that home's Ray head is ever signalled."""
    info = _head_info(home)
    if info is None or not _is_ray_head(info):
        return
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORCH_"))}
    try:
        subprocess.run([sys.executable, "-m", "orchestrator", "cluster", "down", "--cancel"], cwd=REPO_ROOT,
                       env={**base, **(env or {}), "ORCH_HOME": str(home)}, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        pass
    if _is_ray_head(info):
        try:
            os.killpg(info.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _homes_with_a_cluster(root: Path) -> list[Path]:
    # ORCH_HOME is the tmp dir itself or a folder or two below it; deeper trees are storage, not homes.
    found = []
    for pattern in ("cluster/cluster.json", "*/cluster/cluster.json", "*/*/cluster/cluster.json"):
        found += [p.parent.parent for p in root.glob(pattern)]
    return found


@pytest.fixture(autouse=True)
def _no_embedded_cluster_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    tmp_path = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if isinstance(tmp_path, Path) and tmp_path.is_dir():
        for home in _homes_with_a_cluster(tmp_path):
            stop_embedded_cluster(home)
