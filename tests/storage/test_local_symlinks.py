"""A local store never reads or writes outside its directory through a symlink planted inside it."""

from __future__ import annotations

import pytest

from orchestrator.storage import StorageError, open_store


def test_writes_through_a_symlinked_directory_are_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "store" / "jobs" / "j").mkdir(parents=True)
    (tmp_path / "store" / "jobs" / "j" / "report").symlink_to(outside)
    job = open_store(str(tmp_path / "store")).child("jobs/j")
    with pytest.raises(StorageError, match="outside the storage directory"):
        job.put_bytes("report/report.html", b"<html>")
    assert list(outside.iterdir()) == []


def test_reads_of_a_symlinked_file_and_listing_a_symlinked_prefix_are_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for storage readers")
    (tmp_path / "store" / "jobs" / "j").mkdir(parents=True)
    (tmp_path / "store" / "jobs" / "j" / "spec.yaml").symlink_to(secret)
    (tmp_path / "store" / "jobs" / "k").symlink_to(tmp_path)
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(StorageError, match="outside the storage directory"):
        store.child("jobs/j").get_bytes("spec.yaml")
    with pytest.raises(StorageError, match="outside the storage directory"):
        store.get_file("jobs/j/spec.yaml", tmp_path / "copy")
    with pytest.raises(StorageError, match="outside the storage directory"):
        store.list("jobs/k")


def test_a_store_whose_own_root_is_a_symlink_works(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    store = open_store(str(tmp_path / "link")).child("jobs/j")
    store.put_bytes("a/b.txt", b"x")
    assert store.get_bytes("a/b.txt") == b"x"
    assert (tmp_path / "real" / "jobs" / "j" / "a" / "b.txt").exists()
