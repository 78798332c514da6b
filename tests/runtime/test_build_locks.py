"""A JIT-build lock left by a killed worker is removed; a build in progress is left alone."""

import os

from orchestrator.runtime.build_locks import STALE_AFTER_S, clear_stale_build_locks


def test_only_locks_older_than_a_build_are_removed(tmp_path):
    stale = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "other_op" / "lock"
    output = tmp_path / "other_op" / "other_op.so"
    for path in (stale, fresh, output):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    now = stale.stat().st_mtime + STALE_AFTER_S + 1
    os.utime(fresh, (now - 5, now - 5))
    os.utime(output, (0, 0))  # old build outputs are not locks
    assert clear_stale_build_locks(tmp_path, now=now) == [stale]
    assert not stale.exists() and fresh.exists() and output.exists()


def test_the_default_root_follows_torch_extensions_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "op" / "lock"
    lock.parent.mkdir()
    lock.write_text("")
    os.utime(lock, (0, 0))
    assert clear_stale_build_locks() == [lock]
