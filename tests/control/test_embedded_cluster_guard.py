"""The test suite's backstop stops an embedded cluster a test left behind, and only a real head of that home."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.embedded_clusters import stop_embedded_cluster


def _head(home: Path, port: str) -> subprocess.Popen:
    """A stand-in for `ray start --head --block` (its own session, as the real one) registered in `home`."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "ray.scripts.scripts", "start",
                             "--head", "--port", port], start_new_session=True)
    deadline = time.monotonic() + 30
    while b"--head" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)  # until the child has exec'd: before that, its command line is empty
    (home / "cluster").mkdir(parents=True)
    (home / "cluster" / "cluster.json").write_text(json.dumps({
        "dashboard_url": "http://127.0.0.1:9", "gcs_address": "127.0.0.1:4242", "pid": proc.pid, "num_cpus": 1,
        "num_gpus": 0, "log_file": "x", "idle_stop_s": 0.0, "started_at": time.time()}))
    return proc


def test_a_left_over_head_is_stopped(tmp_path: Path) -> None:
    proc = _head(tmp_path / "home", "4242")
    try:
        stop_embedded_cluster(tmp_path / "home")
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_process_that_is_not_that_head_is_left_alone(tmp_path: Path) -> None:
    proc = _head(tmp_path / "home", "4243")  # another port than cluster.json names: not this home's head
    try:
        stop_embedded_cluster(tmp_path / "home")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
