"""Reading checkpoints back: listing, verification (shallow or deep) and hash-checked download."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.checkpoints.protocol import (
    CHECKPOINTS_DIR,
    MANIFEST_NAME,
    STEP_DIR,
    Manifest,
    ManifestError,
    manifest_key,
    read_manifest,
    sha256_file,
    step_objects,
    step_prefix,
)
from orchestrator.storage import NotFound, ObjectInfo, ObjectStore, StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    committed: bool
    created: str | None  # ISO-8601 UTC: the manifest's time, or the newest upload of an uncommitted step
    size: int  # bytes stored under the step directory
    metrics: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why a step with a MANIFEST.json still counts as uncommitted


def list_checkpoints(store: ObjectStore) -> list[CheckpointInfo]:
    """Every step directory, oldest first. Steps without a (valid) manifest are committed=False."""
    by_step: dict[int, list[ObjectInfo]] = {}
    for info in store.list(CHECKPOINTS_DIR):
        parts = info.key.split("/")
        match = STEP_DIR.match(parts[1]) if len(parts) > 2 else None
        if match and step_prefix(int(match.group(1))) == f"{parts[0]}/{parts[1]}":
            by_step.setdefault(int(match.group(1)), []).append(info)
    result = []
    for step, objects in sorted(by_step.items()):
        size = sum(obj.size for obj in objects)
        newest = max(obj.mtime for obj in objects).isoformat(timespec="seconds")
        if not any(obj.key == manifest_key(step) for obj in objects):
            result.append(CheckpointInfo(step, committed=False, created=newest, size=size))
            continue
        try:
            manifest = read_manifest(store, step)
        except NotFound:  # deleted since we listed (retention running elsewhere)
            result.append(CheckpointInfo(step, committed=False, created=newest, size=size))
        except ManifestError as exc:
            result.append(CheckpointInfo(step, committed=False, created=newest, size=size, problem=str(exc)))
        else:
            result.append(CheckpointInfo(
                step, committed=True, created=manifest["created"], size=size, metrics=manifest["metrics"]
            ))
    return result


@dataclass(frozen=True)
class VerifyResult:
    step: int
    manifest: Manifest | None
    problems: list[str]  # one readable line each, naming the file
    bad_files: list[str]  # paths (relative to the step dir) that are missing, truncated or corrupted
    checked_files: int  # files whose size (and with deep=True, content hash) was checked

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems


def verify_checkpoint(store: ObjectStore, step: int, *, deep: bool = False) -> VerifyResult:
    """Check a checkpoint against its manifest: presence and size, and with deep=True every sha256.

    deep=True downloads every file (one at a time, to a temporary directory), so it costs the whole
    checkpoint's size in transfer; shallow verification is a single listing.
    """
    try:
        manifest = read_manifest(store, step)
    except NotFound:
        problem = f"{MANIFEST_NAME} is missing: the checkpoint is not committed"
        return VerifyResult(step, None, [problem], [], 0)
    except ManifestError as exc:
        return VerifyResult(step, None, [str(exc)], [], 0)
    objects = step_objects(store, step)
    problems: list[str] = []
    bad: list[str] = []
    with tempfile.TemporaryDirectory(prefix="orch-verify-") as tmp:
        hash_in = Path(tmp) if deep else None
        for entry in manifest["files"]:
            problem = _file_problem(store, step, entry, objects.get(entry["path"]), hash_in)
            if problem:
                problems.append(problem)
                bad.append(entry["path"])
    return VerifyResult(step, manifest, problems, bad, checked_files=len(manifest["files"]))


def _file_problem(
    store: ObjectStore, step: int, entry: Mapping[str, Any], stored_size: int | None, hash_in: Path | None
) -> str | None:
    """What is wrong with one manifest file, if anything; its content is re-hashed when given a temp dir."""
    path, size = entry["path"], entry["size"]
    if stored_size is None:
        return f"{path}: missing"
    if stored_size != size:
        return f"{path}: {stored_size} bytes stored, the manifest says {size} (truncated or replaced)"
    if hash_in is None:
        return None
    digest = _stored_sha256(store, step, path, hash_in)
    if digest is None:
        return f"{path}: missing"
    if digest != entry["sha256"]:
        return f"{path}: content does not match its sha256 (corrupted)"
    return None



def _stored_sha256(store: ObjectStore, step: int, path: str, tmp_dir: Path) -> str | None:
    """sha256 of a stored file (None if it is gone), downloaded to disk because it may be any size."""
    local = tmp_dir / "file"
    try:
        store.get_file(f"{step_prefix(step)}/{path}", local)
    except NotFound:  # deleted since we listed
        return None
    try:
        return sha256_file(local)[0]
    finally:
        local.unlink()


def latest_verified(store: ObjectStore, deep: bool = False) -> Manifest | None:
    """The manifest of the newest committed checkpoint that verifies; damaged newer ones are skipped."""
    for info in reversed(list_checkpoints(store)):
        if not info.committed:
            continue
        result = verify_checkpoint(store, info.step, deep=deep)
        if result.ok:
            return result.manifest
        log.warning("Skipping checkpoint step %d in %s, it fails verification: %s",
                    info.step, store.uri, "; ".join(result.problems))
    return None


def download_checkpoint(store: ObjectStore, step: int, dest_dir: str | Path) -> Path:
    """Fetch every file of a committed checkpoint to dest_dir/<path>, checking each sha256."""
    try:
        manifest = read_manifest(store, step)
    except NotFound as exc:
        raise NotFound(
            f"Storage {store.uri}: checkpoint step {step} is not committed (no {MANIFEST_NAME})."
        ) from exc
    dest = Path(dest_dir)
    for entry in manifest["files"]:
        target = dest / entry["path"]
        store.get_file(f"{step_prefix(step)}/{entry['path']}", target)
        digest, size = sha256_file(target)
        if (digest, size) != (entry["sha256"], entry["size"]):
            raise StorageError(
                f"Storage {store.uri}: '{entry['path']}' of checkpoint step {step} is corrupted (sha256/size "
                "differ from its manifest). Restore from an older checkpoint; `orch verify` lists the damage."
            )
    return dest
