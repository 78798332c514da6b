"""One behaviour suite, run against both backends: what callers may rely on whatever the storage."""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.storage import LocalStore, NotFound, ObjectStore, StorageError, open_store
from tests.s3server import S3Server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "store-root"))
    return open_store(request.getfixturevalue("s3_env"))


def raw_keys(store: ObjectStore, request: pytest.FixtureRequest) -> list[str]:
    """Everything physically present under the store's root, bypassing the store's own filtering."""
    if isinstance(store, LocalStore):
        if not store.root.exists():
            return []
        # Directories are listed too (with a trailing '/'): an empty one left behind is a "marker".
        found = []
        for folder, dirs, files in os.walk(store.root):
            found += [os.path.relpath(os.path.join(folder, name), store.root) for name in files]
            if folder != str(store.root) and not dirs and not files:
                found.append(os.path.relpath(folder, store.root) + "/")
        return sorted(found)
    server: S3Server = request.getfixturevalue("s3_server")
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=store.bucket)  # type: ignore[attr-defined]
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_put_get_overwrite_exists(store: ObjectStore) -> None:
    assert not store.exists("a/b.bin")
    store.put_bytes("a/b.bin", b"one")
    assert store.exists("a/b.bin")
    assert not store.exists("a")  # a "folder" is not an object
    assert store.get_bytes("a/b.bin") == b"one"
    store.put_bytes("a/b.bin", b"two!")
    assert store.get_bytes("a/b.bin") == b"two!"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""


def test_missing_key_is_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        store.get_bytes("nope/missing.json")
    assert isinstance(info.value, KeyError) and isinstance(info.value, StorageError)
    assert not info.value.retryable
    assert "nope/missing.json" in str(info.value) and store.uri in str(info.value)
    with pytest.raises(NotFound):
        store.get_file("nope/missing.json", tmp_path / "out" / "x")
    assert not (tmp_path / "out" / "x").exists()


def test_list_is_recursive_sorted_and_relative(store: ObjectStore) -> None:
    for key, data in [("b/2", b"22"), ("a", b"1"), ("b/1/x", b"333"), ("bb/y", b"4"), ("c", b"")]:
        store.put_bytes(key, data)
    listed = store.list()
    assert [(o.key, o.size) for o in listed] == [("a", 1), ("b/1/x", 3), ("b/2", 2), ("bb/y", 1), ("c", 0)]
    assert all(o.mtime.tzinfo is not None for o in listed)
    # A prefix is a folder: "b" must not match "bb/y"; a trailing '/' is tolerated.
    assert [o.key for o in store.list("b")] == ["b/1/x", "b/2"]
    assert [o.key for o in store.list("b/")] == ["b/1/x", "b/2"]
    assert store.list("b/1/x") == []  # an object is not a folder
    assert store.list("nothing-here") == []


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put_bytes("d/x", b"1")
    store.put_bytes("d/y", b"2")
    store.delete("d/x")
    store.delete("d/x")
    store.delete("never/existed")
    assert [o.key for o in store.list()] == ["d/y"]


def test_delete_prefix_counts_and_stays_inside(store: ObjectStore) -> None:
    for key in ["p/1", "p/q/2", "p/q/r/3", "pp/4", "p5"]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("p") == 3
    assert [o.key for o in store.list()] == ["p5", "pp/4"]
    assert store.delete_prefix("p") == 0


def test_child_store(store: ObjectStore) -> None:
    job = store.child("jobs/j1")
    assert job.uri == store.uri + "/jobs/j1"
    job.put_bytes("spec.json", b"{}")
    job.child("checkpoints").put_bytes("step-1/f", b"ff")
    assert store.get_bytes("jobs/j1/spec.json") == b"{}"
    assert [o.key for o in job.list()] == ["checkpoints/step-1/f", "spec.json"]
    assert [o.key for o in store.list("jobs")] == ["jobs/j1/checkpoints/step-1/f", "jobs/j1/spec.json"]
    assert job.child("checkpoints").get_bytes("step-1/f") == b"ff"
    assert job.delete_prefix("") == 2
    assert store.list() == []


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "../x", "a/./b", "a/../b", "a\\b"])
def test_invalid_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_file_round_trip_is_atomic(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(100_000))
    store.put_file("files/source.bin", source)
    dest = tmp_path / "deep" / "er" / "dest.bin"
    store.get_file("files/source.bin", dest)
    assert dest.read_bytes() == source.read_bytes()
    dest.write_bytes(b"stale")
    store.get_file("files/source.bin", str(dest))  # replaces an existing file
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest.bin"]  # no temp files left
    with pytest.raises(FileNotFoundError):
        store.put_file("files/other", tmp_path / "does-not-exist")


def test_multipart_upload_round_trip(
    store: ObjectStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    source = tmp_path / "big.bin"
    data = os.urandom(20 * 1024 * 1024 + 123)  # > 2 parts of 8 MiB, not a multiple of the part size
    source.write_bytes(data)
    store.put_file("big/big.bin", source)
    assert [(o.key, o.size) for o in store.list("big")] == [("big/big.bin", len(data))]
    if not isinstance(store, LocalStore):
        server: S3Server = request.getfixturevalue("s3_server")
        head = server.client().head_object(Bucket=store.bucket, Key=f"{store.prefix}/big/big.bin")  # type: ignore[attr-defined]
        assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag: md5-of-parts + "-" + part count
    dest = tmp_path / "back.bin"
    store.get_file("big/big.bin", dest)
    assert dest.read_bytes() == data


def test_pagination(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real page limits are 1000 keys per ListObjectsV2 page and DeleteObjects call; smaller ones exercise
    # the same continuation code without uploading thousands of objects to moto (~10 ms each).
    if not isinstance(store, LocalStore):
        monkeypatch.setattr(store, "page_size", 100)
        monkeypatch.setattr("orchestrator.storage.s3.DELETE_BATCH", 100)
    keys = [f"many/{i:05d}" for i in range(250)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: store.put_bytes(key, b"."), keys))
    assert [o.key for o in store.list("many")] == keys
    assert store.delete_prefix("many") == 250
    assert store.list() == []


def test_no_directory_markers_ever(
    store: ObjectStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"file")
    store.put_bytes("x/y/z", b"1")
    store.put_file("x/f", source)
    store.child("c/d").put_bytes("e", b"2")
    store.get_file("x/y/z", tmp_path / "out")
    store.list("x")
    store.exists("x/y")
    store.delete("x/y/z")
    keys = raw_keys(store, request)
    assert not any(key.endswith("/") for key in keys), keys
    store.delete_prefix("c")
    store.delete("x/f")
    assert raw_keys(store, request) == []


def test_store_survives_pickling(store: ObjectStore) -> None:
    store.put_bytes("k", b"before")  # the S3 client now exists and must not be pickled
    clone = pickle.loads(pickle.dumps(store))
    assert clone.uri == store.uri
    assert clone.get_bytes("k") == b"before"
    clone.put_bytes("k", b"after")
    assert store.get_bytes("k") == b"after"


def test_check_passes_and_creates_nothing(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    store.check()
    store.child("not/yet/there").check()
    assert raw_keys(store, request) == []
