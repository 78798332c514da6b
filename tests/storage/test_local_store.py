"""open_store's URI forms and what is specific to the local-directory backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.storage import LocalStore, StorageError, open_store
from orchestrator.storage.s3 import S3Store


def test_uri_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("data/orch")
    assert isinstance(relative, LocalStore)
    assert relative.root == tmp_path / "data" / "orch"
    assert relative.uri == f"file://{tmp_path}/data/orch"
    assert open_store(f"file://{tmp_path}/x").uri == f"file://{tmp_path}/x"
    spaced = open_store((tmp_path / "with space").as_uri())  # what settings.default_storage_uri() produces
    assert isinstance(spaced, LocalStore) and spaced.root == tmp_path / "with space"
    assert open_store(spaced.uri).uri == spaced.uri  # round-trips
    s3 = open_store("s3://bucket/a/b/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.uri) == ("bucket", "a/b", "s3://bucket/a/b")
    assert open_store("s3://bucket").uri == "s3://bucket"


@pytest.mark.parametrize("uri", ["", "   ", "gs://bucket/x", "file://host/x", "file:relative", "s3:/bucket"])
def test_unsupported_uris(uri: str) -> None:
    with pytest.raises(StorageError, match="'storage'"):
        open_store(uri)


def test_check_creates_nothing(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "a" / "b"))
    store.check()
    assert list(tmp_path.iterdir()) == []


def test_check_reports_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a directory") as info:
        open_store(str(tmp_path / "file" / "store")).check()
    assert str(tmp_path / "file") in str(info.value)


def test_check_reports_an_unwritable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write anywhere, so pretend the permission bits apply
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    with pytest.raises(StorageError, match="not writable") as info:
        open_store(str(locked / "store")).check()
    assert str(locked) in str(info.value)
    open_store(str(tmp_path / "fine")).check()


def test_writes_leave_no_temp_files_and_deletes_prune_folders(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "root"))
    assert isinstance(store, LocalStore)
    store.put_bytes("a/b/c", b"1")
    store.put_bytes("a/d", b"2")
    assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["b", "d"]
    store.delete("a/b/c")
    assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["d"]
    store.delete("a/d")
    assert list((tmp_path / "root").iterdir()) == []  # the root itself stays


def test_in_progress_writes_are_not_listed(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put_bytes("k", b"1")
    (tmp_path / ".k.0123456789ab.orch-tmp").write_bytes(b"partial")
    assert [o.key for o in store.list()] == ["k"]


def test_unwritable_store_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    store = open_store(str(tmp_path))
    with pytest.raises(StorageError, match="cannot write 'blocker/k'") as info:
        store.put_bytes("blocker/k", b"1")  # its folder would be where a file is
    assert "'storage' field" in str(info.value)
    with pytest.raises(StorageError, match="cannot write 'blocker/x/k'") as info:
        store.put_bytes("blocker/x/k", b"1")
    assert not isinstance(info.value, KeyError)
