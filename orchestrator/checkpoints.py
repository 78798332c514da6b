"""Checkpoints in storage: the commit protocol, listing, verification, download and retention.

Layout under a job's store (already rooted at jobs/<job-id>):

    checkpoints/step-000120/<files uploaded by each rank, any sub-paths>
    checkpoints/step-000120/_ranks/rank-00000.json   per rank, written AFTER that rank's files are uploaded
    checkpoints/step-000120/MANIFEST.json            written LAST: the commit marker

A checkpoint exists for readers only once MANIFEST.json does, and the manifest lists every file with
its size and sha256, so a crash at any point leaves either a complete checkpoint or an uncommitted
directory that is never restored from and is eventually garbage-collected by retention. Deletion runs
in the opposite order (manifest first), so an interrupted deletion is uncommitted garbage too.
Nothing here knows about torch or DeepSpeed: files are opaque bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.storage import NotFound, ObjectInfo, ObjectStore, StorageError
from orchestrator.storage.base import check_key

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
RANKS_DIR = "_ranks"
HASH_CHUNK = 1024 * 1024
_STEP_DIR = re.compile(r"^step-(\d+)$")
_RESERVED_KEYS = frozenset({"step", "created", "world_size", "metrics", "spec_hash", "files"})

# MANIFEST.json as parsed JSON: {"step", "created", "world_size", "metrics", "spec_hash", "files", **extra}.
# A plain dict so that callers' extra fields survive and it serialises as-is.
Manifest = dict[str, Any]


class ManifestError(StorageError):
    """A MANIFEST.json or rank part exists but is not valid (truncated, hand-edited, wrong schema)."""


# -- schema --------------------------------------------------------------------------------------------


def check_checkpoint_path(path: str) -> str:
    """A file's path inside a step directory: a plain relative key outside the protocol's own names."""
    check_key(path)
    if path == MANIFEST_NAME or path.split("/", 1)[0] == RANKS_DIR:
        raise ValueError(f"checkpoint file path {path!r} clashes with {MANIFEST_NAME} or {RANKS_DIR}/")
    return path


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _relative_path(cls, path: str) -> str:
        # Also what keeps a hostile manifest from making download_checkpoint write outside its directory.
        return check_checkpoint_path(path)


class RankPart(BaseModel):
    rank: int = Field(ge=0)
    files: list[FileEntry]


class ManifestFile(FileEntry):
    rank: int = Field(ge=0)


class ManifestModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int = Field(ge=0)
    created: datetime
    world_size: int = Field(ge=1)
    metrics: dict[str, Any]
    spec_hash: str
    files: list[ManifestFile]


# -- keys and hashing ----------------------------------------------------------------------------------


def step_prefix(step: int) -> str:
    """'checkpoints/step-000120': zero-padded so that listing order is step order up to a million."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"{CHECKPOINTS_DIR}/step-{step:06d}"


def rank_part_key(step: int, rank: int) -> str:
    return f"{step_prefix(step)}/{RANKS_DIR}/rank-{rank:05d}.json"


def manifest_key(step: int) -> str:
    return f"{step_prefix(step)}/{MANIFEST_NAME}"


def sha256_file(path: str | Path) -> tuple[str, int]:
    """(hex sha256, size) of a local file, read in 1 MiB chunks so that any size fits in memory."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def file_entry(local_path: str | Path, rel_path: str) -> dict[str, Any]:
    """The rank-part entry for a file uploaded to <step dir>/<rel_path>."""
    digest, size = sha256_file(local_path)
    return {"path": check_checkpoint_path(rel_path), "size": size, "sha256": digest}


# -- commit protocol -----------------------------------------------------------------------------------


def write_rank_part(store: ObjectStore, step: int, rank: int, entries: Iterable[Mapping[str, Any]]) -> None:
    """Record what `rank` uploaded for `step`. Call only after all its files are in storage."""
    part = RankPart(rank=rank, files=[FileEntry.model_validate(dict(entry)) for entry in entries])
    store.put_bytes(rank_part_key(step, rank), part.model_dump_json(indent=2).encode())


def _step_objects(store: ObjectStore, step: int) -> dict[str, int]:
    """{path relative to the step dir: size} for everything stored under the step."""
    prefix = step_prefix(step) + "/"
    return {info.key[len(prefix):]: info.size for info in store.list(step_prefix(step))}


def _missing_ranks(objects: Mapping[str, int], step: int, world_size: int) -> list[int]:
    start = len(step_prefix(step)) + 1
    return [rank for rank in range(world_size) if rank_part_key(step, rank)[start:] not in objects]


def _read_rank_part(store: ObjectStore, step: int, rank: int) -> RankPart:
    key = rank_part_key(step, rank)
    try:
        part = RankPart.model_validate_json(store.get_bytes(key))
    except ValidationError as exc:
        raise ManifestError(
            f"Storage {store.uri}: rank part '{key}' is not valid: {_first_error(exc)}."
        ) from exc
    if part.rank != rank:
        raise ManifestError(f"Storage {store.uri}: rank part '{key}' says it is from rank {part.rank}.")
    return part


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def try_commit(
    store: ObjectStore,
    step: int,
    world_size: int,
    metrics: Mapping[str, Any],
    spec_hash: str,
    extra: Mapping[str, Any] | None = None,
) -> Manifest | None:
    """Write MANIFEST.json if every rank's part is present; None while some are missing.

    Idempotent: if the step is already committed, the existing manifest is returned unchanged. Before
    committing, every listed file is checked to be in storage with its recorded size, so a manifest
    never points at a file that is not there.
    """
    clash = _RESERVED_KEYS.intersection(extra or {})
    if clash:
        raise ValueError(f"extra manifest fields {sorted(clash)} would overwrite the manifest's own")
    objects = _step_objects(store, step)
    if MANIFEST_NAME in objects:
        return read_manifest(store, step)
    if _missing_ranks(objects, step, world_size):
        return None
    files: dict[str, dict[str, Any]] = {}
    for rank in range(world_size):
        for entry in _read_rank_part(store, step, rank).files:
            previous = files.get(entry.path)
            if previous is not None:
                if (previous["size"], previous["sha256"]) != (entry.size, entry.sha256):
                    raise ManifestError(
                        f"Storage {store.uri}: ranks {previous['rank']} and {rank} both uploaded different "
                        f"'{entry.path}' for checkpoint step {step}; each rank must write its own files."
                    )
                continue
            stored = objects.get(entry.path)
            if stored != entry.size:
                found = "nothing" if stored is None else f"{stored} bytes"
                raise StorageError(
                    f"Storage {store.uri}: checkpoint step {step} cannot be committed: rank {rank} recorded "
                    f"'{entry.path}' ({entry.size} bytes) but storage holds {found}. The checkpoint stays "
                    "uncommitted and will not be used."
                )
            files[entry.path] = {**entry.model_dump(), "rank": rank}
    manifest: Manifest = {
        **(extra or {}),
        "step": step,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "world_size": world_size,
        "metrics": dict(metrics),
        "spec_hash": spec_hash,
        "files": [files[path] for path in sorted(files)],
    }
    store.put_bytes(manifest_key(step), json.dumps(manifest, indent=2).encode())
    log.info("Committed checkpoint step %d in %s (%d files)", step, store.uri, len(files))
    return manifest


def wait_and_commit(
    store: ObjectStore,
    step: int,
    world_size: int,
    metrics: Mapping[str, Any],
    spec_hash: str,
    extra: Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
) -> Manifest:
    """try_commit until every rank's part has arrived; StorageError naming the missing ranks on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        manifest = try_commit(store, step, world_size, metrics, spec_hash, extra)
        if manifest is not None:
            return manifest
        if time.monotonic() >= deadline:
            missing = _missing_ranks(_step_objects(store, step), step, world_size)
            if not missing:  # the last part arrived just now: the next try_commit succeeds (or says why not)
                continue
            raise StorageError(
                f"Storage {store.uri}: checkpoint step {step} was not committed: rank(s) "
                f"{', '.join(map(str, missing))} did not finish uploading within {timeout_s:.0f} s. The "
                "checkpoint stays uncommitted and will not be used; retention removes it later."
            )
        time.sleep(poll_s)


def read_manifest(store: ObjectStore, step: int) -> Manifest:
    """The committed manifest of `step`: NotFound if uncommitted, ManifestError if it is not valid."""
    key = manifest_key(step)
    raw = store.get_bytes(key)
    try:
        # Strict: "step": "120" is as wrong as no step, since the JSON itself is what callers get back.
        ManifestModel.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise ManifestError(
            f"Storage {store.uri}: '{key}' is not a valid manifest: {_first_error(exc)}."
        ) from exc
    manifest: Manifest = json.loads(raw)
    if manifest["step"] != step:
        raise ManifestError(f"Storage {store.uri}: '{key}' describes step {manifest['step']}, not {step}.")
    return manifest


# -- listing and verification --------------------------------------------------------------------------


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
        match = _STEP_DIR.match(parts[1]) if len(parts) > 2 else None
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
    objects = _step_objects(store, step)
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


# -- retention -----------------------------------------------------------------------------------------


def plan_retention(
    checkpoints: Sequence[CheckpointInfo],
    keep_latest: int,
    keep_best: int = 0,
    metric: str | None = None,
    mode: Literal["min", "max"] = "min",
) -> list[int]:
    """Steps to delete, ascending. Pure: decides from the listing alone.

    Kept: the `keep_latest` newest committed checkpoints (0 keeps every committed one), the `keep_best`
    committed ones by `metric` (ties go to the newer step; checkpoints without a finite numeric value
    for it never rank), and always the newest committed checkpoint. Uncommitted step directories older
    than the newest committed one are garbage (failed or interrupted saves, interrupted deletions);
    newer ones may be saves in progress and are left alone.
    """
    if keep_latest < 0 or keep_best < 0:
        raise ValueError("keep_latest and keep_best must be >= 0")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if keep_best and not metric:
        raise ValueError("keep_best needs the metric to rank checkpoints by")
    committed = sorted((c for c in checkpoints if c.committed), key=lambda c: c.step)
    if not committed:
        return []
    newest = committed[-1].step
    if keep_latest == 0:
        keep = {c.step for c in committed}
    else:
        keep = {c.step for c in committed[-keep_latest:]}
    if keep_best:
        sign = 1 if mode == "min" else -1
        ranked = sorted(
            (c for c in committed if _finite_number(c.metrics.get(metric or ""))),
            key=lambda c: (sign * c.metrics[metric or ""], -c.step),
        )
        keep.update(c.step for c in ranked[:keep_best])
    return sorted(
        c.step for c in checkpoints
        if (c.committed and c.step not in keep) or (not c.committed and c.step < newest)
    )


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def apply_retention(
    store: ObjectStore,
    *,
    keep_latest: int,
    keep_best: int = 0,
    metric: str | None = None,
    mode: Literal["min", "max"] = "min",
) -> list[int]:
    """Delete what plan_retention says; returns the deleted steps. Safe to re-run after an interruption.

    Run it where no save of an *older* step can be in progress (the committer does it right after a
    commit): an uncommitted directory older than the newest committed checkpoint is deleted as garbage.
    """
    steps = plan_retention(list_checkpoints(store), keep_latest, keep_best, metric, mode)
    for step in steps:
        # The manifest goes first: from then on the step is uncommitted, so a deletion cut short here
        # can never be mistaken for a usable checkpoint, and the next run deletes the rest.
        store.delete(manifest_key(step))
        store.delete_prefix(step_prefix(step))
    if steps:
        log.info("Retention deleted checkpoint step(s) %s in %s", ", ".join(map(str, steps)), store.uri)
    return steps
