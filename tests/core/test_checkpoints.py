"""Checkpoint manifests: commit protocol, verification, download and retention, on real stores."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from pathlib import Path

import pytest

from orchestrator.core import checkpoints as ck
from orchestrator.core.checkpoints import CheckpointInfo, ManifestError, plan_retention
from orchestrator.storage import LocalStore, NotFound, ObjectStore, StorageError, open_store

SPEC_HASH = "spec-abc123"
# Two ranks, DeepSpeed-like files, one in a sub-directory.
RANK_FILES = {
    0: {
        "mp_rank_00_model_states.pt": b"model" * 1000,
        "zero/zero_pp_rank_0_optim_states.pt": b"optim-0" * 500,
    },
    1: {"zero/zero_pp_rank_1_optim_states.pt": b"optim-1" * 700},
}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "storage")).child("jobs/job-1")
    return open_store(request.getfixturevalue("s3_env")).child("jobs/job-1")


@pytest.fixture
def local(tmp_path: Path) -> ObjectStore:
    return open_store(str(tmp_path / "storage")).child("jobs/job-1")


def upload_rank(store: ObjectStore, tmp: Path, step: int, rank: int, files: dict[str, bytes]) -> None:
    """What a worker does: upload its files, then write its rank part."""
    entries = []
    for rel, data in files.items():
        local = tmp / f"rank{rank}-step{step}" / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        store.put_file(f"{ck.step_prefix(step)}/{rel}", local)
        entries.append(ck.file_entry(local, rel))
    ck.write_rank_part(store, step, rank, entries)


def save(store: ObjectStore, tmp: Path, step: int, metrics: dict[str, float] | None = None) -> ck.Manifest:
    for rank, files in RANK_FILES.items():
        upload_rank(store, tmp, step, rank, files)
    metrics = metrics or {"eval_loss": 1.0 / (step + 1)}
    manifest = ck.try_commit(store, step, len(RANK_FILES), metrics, SPEC_HASH)
    assert manifest is not None
    return manifest


def flip_one_byte(store: ObjectStore, key: str) -> None:
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    store.put_bytes(key, bytes(data))


# -- keys and entries ----------------------------------------------------------------------------------


def test_step_prefix() -> None:
    assert ck.step_prefix(120) == "checkpoints/step-000120"
    assert ck.step_prefix(0) == "checkpoints/step-000000"
    with pytest.raises(ValueError):
        ck.step_prefix(-1)


def test_file_entry_hashes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 10_000  # > 1 MiB hash chunk
    path.write_bytes(data)
    assert ck.file_entry(path, "a/f.bin") == {
        "path": "a/f.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()
    }
    for reserved in ("MANIFEST.json", "_ranks/rank-00000.json", "../f.bin", "/abs"):
        with pytest.raises(ValueError):
            ck.file_entry(path, reserved)


# -- commit protocol -----------------------------------------------------------------------------------


def test_commit_only_after_every_rank_part(store: ObjectStore, tmp_path: Path) -> None:
    upload_rank(store, tmp_path, 120, 0, RANK_FILES[0])
    assert ck.try_commit(store, 120, 2, {"eval_loss": 0.5}, SPEC_HASH) is None
    assert not store.exists("checkpoints/step-000120/MANIFEST.json")
    assert [(c.step, c.committed) for c in ck.list_checkpoints(store)] == [(120, False)]

    upload_rank(store, tmp_path, 120, 1, RANK_FILES[1])
    manifest = ck.try_commit(store, 120, 2, {"eval_loss": 0.5}, SPEC_HASH, extra={"zero_stage": 2})
    assert manifest is not None
    assert store.exists("checkpoints/step-000120/MANIFEST.json")
    assert json.loads(store.get_bytes("checkpoints/step-000120/MANIFEST.json")) == manifest
    assert (manifest["step"], manifest["world_size"], manifest["spec_hash"]) == (120, 2, SPEC_HASH)
    assert manifest["metrics"] == {"eval_loss": 0.5} and manifest["zero_stage"] == 2
    assert manifest["created"].endswith("+00:00")
    assert [(f["path"], f["rank"]) for f in manifest["files"]] == [
        ("mp_rank_00_model_states.pt", 0),
        ("zero/zero_pp_rank_0_optim_states.pt", 0),
        ("zero/zero_pp_rank_1_optim_states.pt", 1),
    ]
    # Idempotent: committing again (a retry, a second committer) returns the same manifest.
    assert ck.try_commit(store, 120, 2, {"eval_loss": 9.9}, SPEC_HASH) == manifest

    [info] = ck.list_checkpoints(store)
    assert (info.step, info.committed, info.metrics) == (120, True, {"eval_loss": 0.5})
    assert info.created == manifest["created"]
    assert info.size == sum(o.size for o in store.list("checkpoints"))
    assert ck.verify_checkpoint(store, 120, deep=False).ok
    deep = ck.verify_checkpoint(store, 120, deep=True)
    assert deep.ok and deep.checked_files == 3 and deep.problems == []


def test_commit_refuses_a_file_that_is_not_in_storage(local: ObjectStore, tmp_path: Path) -> None:
    upload_rank(local, tmp_path, 5, 0, {"a.pt": b"aaaa"})
    local.delete("checkpoints/step-000005/a.pt")  # the part claims a file whose upload was lost
    with pytest.raises(StorageError, match="'a.pt'"):
        ck.try_commit(local, 5, 1, {}, SPEC_HASH)
    assert not local.exists(ck.manifest_key(5))


def test_ranks_must_not_upload_different_files_at_the_same_path(local: ObjectStore, tmp_path: Path) -> None:
    upload_rank(local, tmp_path, 5, 0, {"shared.json": b"{}"})
    upload_rank(local, tmp_path, 5, 1, {"shared.json": b"{}"})  # identical: fine, listed once
    manifest = ck.try_commit(local, 5, 2, {}, SPEC_HASH)
    assert manifest is not None and [f["path"] for f in manifest["files"]] == ["shared.json"]
    upload_rank(local, tmp_path, 6, 0, {"shared.json": b"[0]"})
    upload_rank(local, tmp_path, 6, 1, {"shared.json": b"[1]"})  # same size, so only the hash differs
    with pytest.raises(ManifestError, match="ranks 0 and 1"):
        ck.try_commit(local, 6, 2, {}, SPEC_HASH)


def test_extra_fields_cannot_replace_the_manifest_fields(local: ObjectStore, tmp_path: Path) -> None:
    upload_rank(local, tmp_path, 5, 0, {"a.pt": b"a"})
    with pytest.raises(ValueError, match="files"):
        ck.try_commit(local, 5, 1, {}, SPEC_HASH, extra={"files": []})


def test_wait_and_commit_names_the_missing_rank(local: ObjectStore, tmp_path: Path) -> None:
    upload_rank(local, tmp_path, 7, 0, {"a.pt": b"a"})
    upload_rank(local, tmp_path, 7, 2, {"c.pt": b"c"})
    with pytest.raises(StorageError, match=r"rank\(s\) 1 did not finish"):
        ck.wait_and_commit(local, 7, 3, {}, SPEC_HASH, timeout_s=0.2, poll_s=0.05)
    assert not local.exists(ck.manifest_key(7))


def test_wait_and_commit_returns_once_the_last_rank_arrives(local: ObjectStore, tmp_path: Path) -> None:
    upload_rank(local, tmp_path, 8, 0, RANK_FILES[0])
    late = threading.Timer(0.3, upload_rank, (local, tmp_path, 8, 1, RANK_FILES[1]))
    late.start()
    try:
        manifest = ck.wait_and_commit(local, 8, 2, {"loss": 1.0}, SPEC_HASH, timeout_s=30, poll_s=0.05)
    finally:
        late.join()
    assert manifest["step"] == 8 and len(manifest["files"]) == 3


# -- verification --------------------------------------------------------------------------------------


def test_deep_verify_names_exactly_the_corrupted_file(store: ObjectStore, tmp_path: Path) -> None:
    save(store, tmp_path, 10)
    flip_one_byte(store, "checkpoints/step-000010/zero/zero_pp_rank_1_optim_states.pt")
    assert ck.verify_checkpoint(store, 10, deep=False).ok  # same size: only the hash can tell
    result = ck.verify_checkpoint(store, 10, deep=True)
    assert not result.ok
    assert result.bad_files == ["zero/zero_pp_rank_1_optim_states.pt"]
    assert len(result.problems) == 1 and "zero/zero_pp_rank_1_optim_states.pt" in result.problems[0]


def test_shallow_verify_catches_truncated_and_missing_files(store: ObjectStore, tmp_path: Path) -> None:
    save(store, tmp_path, 10)
    key = "checkpoints/step-000010/mp_rank_00_model_states.pt"
    store.put_bytes(key, store.get_bytes(key)[:-1])
    store.delete("checkpoints/step-000010/zero/zero_pp_rank_0_optim_states.pt")
    result = ck.verify_checkpoint(store, 10, deep=False)
    assert not result.ok
    assert result.bad_files == ["mp_rank_00_model_states.pt", "zero/zero_pp_rank_0_optim_states.pt"]
    assert "truncated" in result.problems[0] and "missing" in result.problems[1]


def test_verify_without_a_valid_manifest(local: ObjectStore, tmp_path: Path) -> None:
    upload_rank(local, tmp_path, 3, 0, {"a.pt": b"a"})
    result = ck.verify_checkpoint(local, 3)
    assert not result.ok and result.manifest is None and "not committed" in result.problems[0]
    local.put_bytes(ck.manifest_key(3), b'{"step": 3, "files": [')  # cut short
    result = ck.verify_checkpoint(local, 3)
    assert not result.ok and "not a valid manifest" in result.problems[0]
    [info] = ck.list_checkpoints(local)
    assert not info.committed and info.problem is not None and "MANIFEST.json" in info.problem


def test_manifest_paths_cannot_escape_the_checkpoint(local: ObjectStore, tmp_path: Path) -> None:
    manifest = save(local, tmp_path, 4)
    manifest["files"][0]["path"] = "../../../outside.txt"
    local.put_bytes(ck.manifest_key(4), json.dumps(manifest).encode())
    with pytest.raises(ManifestError):
        ck.download_checkpoint(local, 4, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()


def test_latest_verified_skips_damaged_newer_checkpoints(
    store: ObjectStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for step in (10, 20, 30):
        save(store, tmp_path, step)
    upload_rank(store, tmp_path, 40, 0, RANK_FILES[0])  # uncommitted: never a candidate
    assert ck.latest_verified(store)["step"] == 30  # type: ignore[index]

    flip_one_byte(store, "checkpoints/step-000030/mp_rank_00_model_states.pt")
    assert ck.latest_verified(store, deep=False)["step"] == 30  # type: ignore[index]
    with caplog.at_level(logging.WARNING, logger="orchestrator.core.checkpoints"):
        assert ck.latest_verified(store, deep=True)["step"] == 20  # type: ignore[index]
    assert "step 30" in caplog.text and "mp_rank_00_model_states.pt" in caplog.text

    key = "checkpoints/step-000020/zero/zero_pp_rank_1_optim_states.pt"
    store.put_bytes(key, store.get_bytes(key)[:10])
    assert ck.latest_verified(store, deep=True)["step"] == 10  # type: ignore[index]


def test_latest_verified_without_checkpoints(local: ObjectStore) -> None:
    assert ck.list_checkpoints(local) == []
    assert ck.latest_verified(local) is None


# -- download ------------------------------------------------------------------------------------------


def test_download_checkpoint(store: ObjectStore, tmp_path: Path) -> None:
    save(store, tmp_path, 50)
    dest = ck.download_checkpoint(store, 50, tmp_path / "restore" / "step-000050")
    downloaded = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert downloaded == {**RANK_FILES[0], **RANK_FILES[1]}  # data files only, no protocol files

    flip_one_byte(store, "checkpoints/step-000050/zero/zero_pp_rank_0_optim_states.pt")
    with pytest.raises(StorageError, match="zero/zero_pp_rank_0_optim_states.pt"):
        ck.download_checkpoint(store, 50, tmp_path / "again")
    with pytest.raises(NotFound, match="not committed"):
        ck.download_checkpoint(store, 60, tmp_path / "never")


# -- retention -----------------------------------------------------------------------------------------


def infos(*items: tuple[int, bool] | tuple[int, bool, dict[str, object]]) -> list[CheckpointInfo]:
    return [
        CheckpointInfo(step=item[0], committed=item[1], created=None, size=1,
                       metrics=dict(item[2]) if len(item) > 2 else {})  # type: ignore[misc]
        for item in items
    ]


C, U = True, False  # committed, uncommitted

RETENTION_CASES = [
    # (name, checkpoints, keep_latest, keep_best, metric, mode, steps to delete)
    ("keep the 2 newest", infos((1, C), (2, C), (3, C), (4, C), (5, C)), 2, 0, None, "min", [1, 2, 3]),
    ("keep_latest=0 keeps every committed one", infos((10, C), (20, C), (30, C)), 0, 0, None, "min", []),
    ("older uncommitted dirs are garbage even with keep_latest=0",
     infos((10, C), (15, U), (20, C)), 0, 0, None, "min", [15]),
    ("newer uncommitted dirs may be saves in progress",
     infos((10, C), (20, C), (30, U), (40, U)), 1, 0, None, "min", [10]),
    ("only uncommitted dirs: nothing is known to be garbage", infos((10, U), (20, U)), 1, 0, None, "min", []),
    ("garbage around the newest", infos((5, U), (10, C), (20, U), (50, C), (60, U)), 1, 0, None, "min",
     [5, 10, 20]),
    ("best by min metric is kept besides the newest",
     infos((10, C, {"eval_loss": 0.5}), (20, C, {"eval_loss": 0.3}), (30, C, {"eval_loss": 0.4}),
           (40, C, {"eval_loss": 0.6})), 1, 1, "eval_loss", "min", [10, 30]),
    ("best by max metric",
     infos((10, C, {"acc": 0.9}), (20, C, {"acc": 0.8}), (30, C, {"acc": 0.7})), 1, 1, "acc", "max", [20]),
    ("keep_best overlapping keep_latest keeps no extra",
     infos((10, C, {"l": 3.0}), (20, C, {"l": 2.0}), (30, C, {"l": 1.0})), 1, 1, "l", "min", [10, 20]),
    ("ties go to the newer step",
     infos((10, C, {"l": 0.3}), (20, C, {"l": 0.3}), (30, C, {"l": 0.5})), 1, 1, "l", "min", [10]),
    ("checkpoints without a finite number never rank",
     infos((10, C, {"l": math.nan}), (20, C), (25, C, {"l": True}), (30, C, {"l": 0.5}), (40, C, {"l": 0.9})),
     1, 1, "l", "min", [10, 20, 25]),
    ("two best plus two latest",
     infos((1, C, {"l": 0.1}), (2, C, {"l": 0.9}), (3, C, {"l": 0.2}), (4, C, {"l": 0.8}), (5, C, {"l": 0.7}),
           (6, C, {"l": 0.6})), 2, 2, "l", "min", [2, 4]),
    ("uncommitted metrics are ignored",
     infos((10, C, {"l": 0.9}), (20, U, {"l": 0.0}), (30, C, {"l": 0.8})), 1, 1, "l", "min", [10, 20]),
    ("no checkpoints at all", [], 2, 1, "l", "min", []),
]


@pytest.mark.parametrize(
    ("checkpoints", "keep_latest", "keep_best", "metric", "mode", "expected"),
    [case[1:] for case in RETENTION_CASES],
    ids=[case[0] for case in RETENTION_CASES],
)
def test_plan_retention(
    checkpoints: list[CheckpointInfo], keep_latest: int, keep_best: int, metric: str | None, mode: str,
    expected: list[int],
) -> None:
    assert plan_retention(checkpoints, keep_latest, keep_best, metric, mode) == expected  # type: ignore[arg-type]


def test_plan_retention_never_deletes_the_newest_committed() -> None:
    checkpoints = infos((10, C, {"l": 0.1}), (20, C, {"l": 0.2}), (30, C, {"l": 0.9}), (40, U))
    for keep_latest in (0, 1, 2):
        for keep_best in (0, 1, 2):
            assert 30 not in plan_retention(checkpoints, keep_latest, keep_best, "l", "min")


@pytest.mark.parametrize(
    ("keep_latest", "keep_best", "metric", "mode"),
    [(-1, 0, None, "min"), (1, -1, "l", "min"), (1, 1, None, "min"), (1, 1, "", "min"), (1, 0, None, "best")],
)
def test_plan_retention_rejects_bad_settings(
    keep_latest: int, keep_best: int, metric: str | None, mode: str
) -> None:
    with pytest.raises(ValueError):
        plan_retention(infos((1, C)), keep_latest, keep_best, metric, mode)  # type: ignore[arg-type]


def test_apply_retention(store: ObjectStore, tmp_path: Path) -> None:
    for step, loss in ((10, 0.1), (20, 0.5), (30, 0.4), (40, 0.3)):
        save(store, tmp_path, step, {"eval_loss": loss})
    upload_rank(store, tmp_path, 15, 0, RANK_FILES[0])  # an abandoned save
    upload_rank(store, tmp_path, 50, 0, RANK_FILES[0])  # a save in progress
    deleted = ck.apply_retention(store, keep_latest=1, keep_best=1, metric="eval_loss", mode="min")
    assert deleted == [15, 20, 30]
    remaining = [(c.step, c.committed) for c in ck.list_checkpoints(store)]
    assert remaining == [(10, True), (40, True), (50, False)]
    assert not store.list(ck.step_prefix(20)) and not store.list(ck.step_prefix(15))
    assert ck.verify_checkpoint(store, 10, deep=True).ok and ck.verify_checkpoint(store, 40, deep=True).ok
    assert ck.apply_retention(store, keep_latest=1, keep_best=1, metric="eval_loss", mode="min") == []


class PowerCut(Exception):
    pass


class CutAfterManifest(LocalStore):
    """A store that dies right after the first deletion: what a crash mid-retention leaves behind."""

    def delete_prefix(self, prefix: str) -> int:
        raise PowerCut(prefix)


def test_interrupted_retention_is_never_a_committed_checkpoint(local: ObjectStore, tmp_path: Path) -> None:
    assert isinstance(local, LocalStore)
    for step in (10, 20, 30):
        save(local, tmp_path, step)
    crashing = CutAfterManifest(local.root)
    with pytest.raises(PowerCut):
        ck.apply_retention(crashing, keep_latest=1)
    # The manifest went first, so the half-deleted step is now merely uncommitted: never restored from.
    listed = [(c.step, c.committed) for c in ck.list_checkpoints(local)]
    assert listed == [(10, False), (20, True), (30, True)]
    assert ck.latest_verified(local)["step"] == 30  # type: ignore[index]
    assert local.list(ck.step_prefix(10))  # its files are still there...
    assert ck.apply_retention(local, keep_latest=1) == [10, 20]  # ...until the next run cleans up
    assert [(c.step, c.committed) for c in ck.list_checkpoints(local)] == [(30, True)]


def test_partially_deleted_checkpoint_is_cleaned_up(store: ObjectStore, tmp_path: Path) -> None:
    for step in (10, 20):
        save(store, tmp_path, step)
    store.delete(ck.manifest_key(10))  # as apply_retention does first...
    store.delete("checkpoints/step-000010/mp_rank_00_model_states.pt")  # ...and a bit more, then it stopped
    assert [(c.step, c.committed) for c in ck.list_checkpoints(store)] == [(10, False), (20, True)]
    assert ck.apply_retention(store, keep_latest=5) == [10]
    assert store.list(ck.step_prefix(10)) == []


def test_the_package_exports_everything_it_lists():
    from orchestrator.core import checkpoints as package

    assert [name for name in package.__all__ if not hasattr(package, name)] == []
    assert package.step_tag(120) == "step-000120"
