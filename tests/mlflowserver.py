"""A real MLflow tracking server for tests: `mlflow server` with a SQLite backend on 127.0.0.1.

Fixture (registered in tests/conftest.py):

    mlflow_server  (session) -> MlflowServer: .uri (http://127.0.0.1:PORT), .client() (an MlflowClient)

ORCH_TEST_MLFLOW_URI names a server that already runs (it starts slowly), to use instead of a new one.

The server runs in its own process group on a free port and only that group is stopped at the end. Tests
use distinct experiment names, so they never see each other's runs. Skipped (never passed) when mlflow is
not installed (`pip install -e '.[test]'` installs it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The server compiles its schema and imports a lot on first start; a loaded CI machine needs a while.
STARTUP_TIMEOUT_S = 300.0


@dataclass
class MlflowServer:
    uri: str

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def runs(self, experiment: str) -> list[Any]:
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "mlflow-server.log", "wb")  # noqa: SIM115 (kept open for the server's life)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
        # Only tracking is tested: no background job runner (a dozen worker processes on a shared machine).
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return proc, uri
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"mlflow server did not start; see {root / 'mlflow-server.log'}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop exactly the server's own process group (it forks uvicorn and a job runner)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    try:  # children that outlived their parent are still in the group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    pytest.importorskip("mlflow")
    if os.environ.get("ORCH_TEST_MLFLOW_URI"):
        yield MlflowServer(os.environ["ORCH_TEST_MLFLOW_URI"])
        return
    root = tmp_path_factory.mktemp("mlflow")
    proc, uri = start_server(root)
    try:
        yield MlflowServer(uri)
    finally:
        stop_server(proc)
