"""End-to-end fixtures: a real local Ray cluster, the real `orch` CLI as a subprocess, a real S3 server.

One Ray cluster serves the whole session (starting one costs ~10 s); each test gets its own ORCH_HOME
database and storage through the `orch` fixture, so tests never see each other's jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.embedded_clusters import stop_embedded_cluster
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
# DeepSpeed's JIT-built comm op takes ~35 s to compile; keep it across test sessions.
EXTENSIONS_CACHE = Path(os.environ.get("ORCH_TEST_EXTENSIONS_DIR", Path.home() / ".cache" / "orch-torch-extensions"))


@dataclass
class Orch:
    """Runs `orch` exactly as a user would, with this test's ORCH_HOME."""

    home: Path
    env: dict[str, str]
    storage: Path = field(init=False)

    def __post_init__(self) -> None:
        self.storage = self.home / "storage"

    def run(self, *args: str, check: bool = True, timeout: float = 600, extra_env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, text=True,
                              capture_output=True, timeout=timeout, env={**self.env, **(extra_env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"orch {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                 f"stderr:\n{proc.stderr}")
        return proc

    def submit(self, spec: str, *sets: str, wait: bool = True,
               **kwargs: Any) -> tuple[str, subprocess.CompletedProcess[str]]:
        args = ["submit", str(REPO / spec), *[a for s in sets for a in ("--set", s)]]
        proc = self.run(*args, *(["--wait"] if wait else []), **kwargs)
        return proc.stdout.strip().splitlines()[-1], proc

    def status(self, job_id: str) -> dict[str, Any]:
        return json.loads(self.run("status", job_id, "--json").stdout)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start one local Ray cluster for the session through `orch cluster up`; stop it at the end."""
    home = tmp_path_factory.mktemp("orch-cluster-home")
    # Ray's socket paths must stay short, so its temp dir is not under pytest's long tmp path.
    ray_tmp = tempfile.mkdtemp(prefix="orch-ray-", dir="/tmp")
    EXTENSIONS_CACHE.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORCH_"))},
        "ORCH_HOME": str(home), "RAY_TMPDIR": ray_tmp, "TORCH_EXTENSIONS_DIR": str(EXTENSIONS_CACHE),
        "PYTHONUNBUFFERED": "1",
    }
    # Shared by every test through ORCH_RAY_ADDRESS from other homes: it runs until the session ends, not idle-stopped.
    up = subprocess.run([sys.executable, "-m", "orchestrator", "cluster", "up", "--idle-stop", "0"], cwd=REPO,
                        env=env, text=True, capture_output=True, timeout=180)
    assert up.returncode == 0, up.stderr
    info = json.loads((home / "cluster" / "cluster.json").read_text())
    try:
        yield {**env, "ORCH_RAY_ADDRESS": info["dashboard_url"]}
    finally:
        stop_embedded_cluster(home, env)


@pytest.fixture
def orch(ray_cluster: dict[str, str], tmp_path: Path) -> Iterator[Orch]:
    home = tmp_path / "orch-home"
    yield Orch(home=home, env={**ray_cluster, "ORCH_HOME": str(home)})
    stop_leftover_ray_jobs(ray_cluster["ORCH_RAY_ADDRESS"], home)


@pytest.fixture
def own_cluster_orch(tmp_path: Path) -> Iterator[Orch]:
    """`orch` for a home that starts an embedded cluster of its own (not the session's shared one), which is
    stopped when the test ends."""
    home = tmp_path / "home"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORCH_"))},
           "ORCH_HOME": str(home), "RAY_TMPDIR": tempfile.mkdtemp(prefix="orch-ray-", dir="/tmp")}
    try:
        yield Orch(home=home, env=env)
    finally:
        stop_embedded_cluster(home, env)


def stop_leftover_ray_jobs(address: str, home: Path) -> None:
    """A failed test must not leave its jobs running on the shared cluster, holding CPUs the next test needs."""
    import sqlite3

    if not (home / "jobs.db").exists():
        return
    with sqlite3.connect(home / "jobs.db") as conn:
        ours = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    client = ray_jobs(address)
    for job in client.list_jobs():
        if job.submission_id and not job.status.is_terminal() and set((job.metadata or {}).values()) & ours:
            client.stop_job(job.submission_id)


DEFAULT_E2E_TIMEOUT_S = 1200


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e_timeout(seconds): fail an e2e test that runs longer (default 1200 s)")


@pytest.fixture(autouse=True)
def e2e_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every e2e test has a deadline: a hung cluster fails that test with a traceback instead of the session."""
    import signal

    marker = request.node.get_closest_marker("e2e_timeout")
    seconds = int(marker.args[0]) if marker else DEFAULT_E2E_TIMEOUT_S

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{request.node.nodeid} ran past its {seconds} s timeout")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def ray_jobs(address: str) -> Any:
    """Ray's own Jobs API client, sending the cluster's token the way `orch` does (Ray enables token auth on
    clusters started where ~/.ray/auth_token exists)."""
    from ray.job_submission import JobSubmissionClient

    from orchestrator.control.cluster_address import auth_headers

    return JobSubmissionClient(address, headers=auth_headers() or None)


def wait_for(predicate: Any, timeout: float, what: str, poll_s: float = 0.5) -> Any:
    """Poll until predicate() is truthy (bounded); returns its value."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll_s)


def committed_steps(job_root: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in (job_root / "checkpoints").glob("step-*/MANIFEST.json"))


def metrics_rows(job_root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (job_root / "metrics.jsonl").read_text().splitlines() if line.strip()]


def attempts(job_root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((job_root / "attempts").glob("attempt-*.json"))]
