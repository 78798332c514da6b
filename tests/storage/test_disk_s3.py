"""Our S3 store against a disk-backed S3-compatible server process (s3rver): plain keys and multipart."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from orchestrator.storage import open_store
from tests.disk_s3 import CREDENTIALS
from tests.s3server import STRAY_AWS_SETTINGS


@pytest.fixture
def store(disk_s3, monkeypatch, tmp_path):
    url, _, _ = disk_s3
    for name in STRAY_AWS_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return open_store(f"s3://orch/{tmp_path.name}")


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def test_plain_keys_list_and_delete(store):
    store.check()
    store.put_bytes("manifests/step-1.json", b'{"step": 1}')
    store.put_bytes("manifests/step-2.json", b'{"step": 2}')
    assert store.get_bytes("manifests/step-1.json") == b'{"step": 1}'
    assert store.exists("manifests/step-2.json") and not store.exists("manifests/step-3.json")
    assert [i.key for i in store.list("manifests")] == ["manifests/step-1.json", "manifests/step-2.json"]
    assert store.delete_prefix("manifests") == 2 and store.list("manifests") == []


def test_multipart_upload_streams_to_the_servers_disk(store, disk_s3, tmp_path: Path):
    _, pid, data_dir = disk_s3
    source = tmp_path / "shard.pt"
    size = 96 * 2**20  # 12 parts of 8 MiB (orchestrator/storage/s3.py TRANSFER_CONFIG)
    with open(source, "wb") as f:
        for _ in range(size // 2**20):
            f.write(os.urandom(2**20))
    before, peak, done = _rss(pid), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss(pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        store.put_file("ckpt/step-1/rank-0/shard.pt", source)
    finally:
        done.set()
        watcher.join()
    copy = tmp_path / "copy.pt"
    store.get_file("ckpt/step-1/rank-0/shard.pt", copy)
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    assert [(i.key, i.size) for i in store.list("ckpt")] == [("ckpt/step-1/rank-0/shard.pt", size)]
    # The object is a file on the server's disk, and the server never held it in memory.
    assert any(p.stat().st_size == size for p in data_dir.rglob("*") if p.is_file())
    assert peak[0] - before < size // 2, (before, peak[0])
