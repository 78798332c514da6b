"""The checkpoint benchmark's upload plumbing, without a server: the test file is written in chunks to its exact
size, the swept configs differ from the store's only where asked, and uploads are interleaved and cleaned up."""

from __future__ import annotations

import zlib

import pytest

from bench import bench_checkpoint
from bench.bench_checkpoint import MiB, config_label, throughput, transfer_config, write_random_file
from orchestrator.storage import s3


def test_random_file_has_the_exact_size_and_does_not_compress(tmp_path):
    path = tmp_path / "blob.bin"
    write_random_file(path, 3 * MiB + 5, chunk=MiB)
    data = path.read_bytes()
    assert len(data) == 3 * MiB + 5
    assert len(zlib.compress(data[:MiB])) > 0.99 * MiB


def test_swept_config_changes_only_parts_and_threads():
    config = transfer_config(32, 8)
    assert config.multipart_chunksize == 32 * MiB and config.max_concurrency == 8
    assert config.multipart_threshold == s3.TRANSFER_CONFIG.multipart_threshold
    assert config.preferred_transfer_client == s3.TRANSFER_CONFIG.preferred_transfer_client
    assert config_label(s3.TRANSFER_CONFIG) == "8 MiB parts, 4 threads"


def test_uploads_are_interleaved_and_each_object_removed_after_timing(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * MiB)
    events: list[str] = []
    setups = {name: (lambda p, key, name=name: events.append(f"{name}:{key}")) for name in ("a", "b")}
    rates = throughput(path, setups, repeats=2, remove=lambda key: events.append(f"rm:{key}"))
    assert events == ["a:up-0-0.bin", "rm:up-0-0.bin", "b:up-0-1.bin", "rm:up-0-1.bin",
                      "a:up-1-0.bin", "rm:up-1-0.bin", "b:up-1-1.bin", "rm:up-1-1.bin"]
    assert all(len(v) == 2 and min(v) > 0 for v in rates.values())


def test_our_upload_uses_the_given_config_and_restores_the_store_s(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(s3.S3Store, "put_file", lambda self, key, path: seen.append(s3.TRANSFER_CONFIG))
    config = transfer_config(64, 8)
    bench_checkpoint.ours(config)(tmp_path / "f", "k")
    assert seen == [config] and s3.TRANSFER_CONFIG is not config


def test_first_checkpoint_step_reads_step_directories_only():
    keys = ["checkpoints/latest.json", "checkpoints/step-000020/rank-0.pt", "checkpoints/step-000010/manifest.json",
            "checkpoints/step-000010.partial/x", "checkpoints/step-000010/rank-1/state.pt"]
    assert bench_checkpoint.first_checkpoint_step(keys) == 10
    with pytest.raises(RuntimeError, match="no checkpoint"):
        bench_checkpoint.first_checkpoint_step(["checkpoints/latest.json"])
