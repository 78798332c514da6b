"""DeepSpeed's /dev/shm all-reduce buffers: released once mapped, stale ones swept, live ones never touched."""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import pytest

from orchestrator.runtime.shm_buffers import PREFIX, SHM_DIR, own_buffer, release_own_buffer, sweep_stale_buffers


@pytest.fixture
def buffers() -> list[Path]:
    """Real /dev/shm files named like DeepSpeed's, unique to this test; removed afterwards."""
    made = [SHM_DIR / f"{PREFIX}_{os.getuid()}_orch.test_{os.getpid()}_{rank}" for rank in range(3)]
    for path in made:
        path.write_bytes(b"\0" * 4096)
    yield made
    for path in made:
        path.unlink(missing_ok=True)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_only_unmapped_buffers_older_than_a_minute_are_swept(buffers):
    mapped, stale, young = buffers
    for path in (mapped, stale):
        _age(path, 3600)
    with open(mapped, "r+b") as f, mmap.mmap(f.fileno(), 4096):  # a live rank maps its peers' buffers
        removed = sweep_stale_buffers()
        assert stale in removed and mapped not in removed and young not in removed
        assert mapped.exists() and young.exists() and not stale.exists()
    assert mapped in sweep_stale_buffers()  # once nobody maps it, it goes too


def test_a_rank_releases_its_own_buffer_by_the_process_groups_address(buffers, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "orch.test")
    monkeypatch.setenv("MASTER_PORT", str(os.getpid()))
    assert own_buffer(1) == buffers[1]
    with open(buffers[1], "r+b") as f, mmap.mmap(f.fileno(), 4096) as mem:
        assert release_own_buffer(1)
        mem[:4] = b"live"  # the mapping outlives the name: peers keep working
        assert mem[:4] == b"live"
    assert not buffers[1].exists() and buffers[0].exists() and buffers[2].exists()
    assert not release_own_buffer(1)  # already gone: nothing to do
    monkeypatch.delenv("MASTER_PORT")
    assert own_buffer(0) is None and not release_own_buffer(0)
