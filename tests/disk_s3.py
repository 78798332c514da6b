"""A disk-backed S3-compatible server process for tests and benchmarks: s3rver (npm), objects as files.

moto (tests/s3server.py) keeps objects in memory and joins multipart uploads in memory, so it cannot hold
multi-GB checkpoints. s3rver stores each object as a file under its data directory and streams multipart
parts to disk (a 1.5 GiB object peaked the server at ~120 MiB RSS). It is an npm package:

    npm install --prefix ~/.cache/orch-s3rver s3rver@3.7.1        (.ci/run does this where npm exists)

`ORCH_S3RVER` may name the s3rver executable instead. Tests using the `disk_s3` fixture are skipped where
neither exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.s3server import free_port, stop_process

S3RVER_HOME = Path.home() / ".cache" / "orch-s3rver"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER", "AWS_DEFAULT_REGION": "us-east-1"}
STARTUP_TIMEOUT_S = 30.0


def s3rver_executable() -> str | None:
    candidates = [os.environ.get("ORCH_S3RVER"), str(S3RVER_HOME / "node_modules" / ".bin" / "s3rver")]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    return found if found and shutil.which("node") else None


@contextmanager
def disk_s3_server(data_dir: Path, buckets: tuple[str, ...] = ("orch",)) -> Iterator[tuple[str, int]]:
    """Run s3rver on 127.0.0.1 with its objects under `data_dir`; yields (endpoint URL, server pid)."""
    executable = s3rver_executable()
    if executable is None:
        raise FileNotFoundError("s3rver is not installed: npm install --prefix ~/.cache/orch-s3rver s3rver@3.7.1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [executable, "-d", str(data_dir), "-a", "127.0.0.1", "-p", str(port), "-s"]
    for bucket in buckets:
        args += ["--configure-bucket", bucket]
    log_path = data_dir.parent / f"s3rver-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(url, process, log_path)
        yield url, process.pid
    finally:
        stop_process(process)


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"s3rver exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # ListBuckets: any answer means it is serving
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"s3rver did not answer in {STARTUP_TIMEOUT_S:.0f} s:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def disk_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    """(endpoint URL, server pid, data directory) of a session-wide s3rver with bucket `orch`."""
    if s3rver_executable() is None:
        pytest.skip("s3rver (npm) is not installed; see tests/disk_s3.py")
    data_dir = tmp_path_factory.mktemp("s3rver") / "data"
    with disk_s3_server(data_dir) as (url, pid):
        yield url, pid, data_dir
