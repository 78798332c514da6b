"""Checkpoint commit protocol: keys, manifest schema, hashing, rank parts and the commit (manifest last)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.storage import ObjectStore, StorageError
from orchestrator.storage.base import check_key

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
RANKS_DIR = "_ranks"
HASH_CHUNK = 1024 * 1024
STEP_DIR = re.compile(r"^step-(\d+)$")
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


def step_tag(step: int) -> str:
    """The step directory's own name (`step-000120`): the tag DeepSpeed saves and loads under."""
    return step_prefix(step).rsplit("/", 1)[-1]


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


def step_objects(store: ObjectStore, step: int) -> dict[str, int]:
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
    objects = step_objects(store, step)
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
            missing = _missing_ranks(step_objects(store, step), step, world_size)
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
