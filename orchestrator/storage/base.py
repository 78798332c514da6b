"""The object-store interface every backend implements, its errors, and the key rules they share.

Keys are plain '/'-separated strings relative to the store's root. They never start or end with '/',
so no backend ever creates or depends on directory-marker objects (MinIO, Ceph, R2 and rclone all
treat those differently). A prefix always means "the keys below this folder": listing "ckpt/step-1"
never returns "ckpt/step-10/...".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.core.errors import NotFoundError, OrchError


class StorageError(OrchError):
    """A storage operation failed; the message names the store URI and what to change.

    `retryable` tells callers whether trying again later may help (a network blip, throttling) or not
    (a missing bucket, wrong credentials).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __str__(self) -> str:
        # KeyError (a base of NotFound) would otherwise quote the message.
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles exceptions between processes; the default would drop `retryable`.
        return (type(self), (str(self),), {"retryable": self.retryable})


class NotFound(StorageError, NotFoundError, KeyError):
    """The key does not exist. Also a KeyError, so mapping-style `except KeyError` works."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store that listed it
    size: int
    mtime: datetime  # timezone-aware UTC


def check_key(key: str) -> str:
    """Return `key` unchanged if it is a valid object key, else raise ValueError (a programming error)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"storage key must be a non-empty string, got {key!r}")
    if key.startswith("/") or key.endswith("/"):
        raise ValueError(f"storage key {key!r} must not start or end with '/'")
    if "\\" in key or "\0" in key:
        raise ValueError(f"storage key {key!r} must not contain backslashes or NUL characters")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"storage key {key!r} must not contain empty, '.' or '..' segments")
    return key


def check_prefix(prefix: str) -> str:
    """Normalise a folder-like prefix: surrounding '/' are dropped, "" means the whole store."""
    prefix = prefix.strip("/")
    return check_key(prefix) if prefix else ""


def check_range(start: int, length: int) -> None:
    """A byte range's start and length must be whole and non-negative (a programming error otherwise)."""
    if start < 0 or length < 0:
        raise ValueError(f"byte range start={start}, length={length}: both must be >= 0")


def join_key(*parts: str) -> str:
    """Join prefixes/keys with '/', skipping empty ones."""
    return "/".join(part for part in parts if part)


class ObjectStore(ABC):
    """A flat key -> bytes store rooted at `uri`. Implementations must be picklable (sent to Ray workers)."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, replacing any previous object atomically."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole object; raises NotFound if it does not exist."""

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Read `length` bytes of an object from byte `start`: fewer at its end, none at or past it; raises
        NotFound if it does not exist. Streaming readers fetch only what they use this way."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Upload a local file (large files are streamed, never read into memory)."""

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Download to `path` atomically (a reader never sees a partial file); parents are created."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at exactly `key`."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object below `prefix` (recursive), sorted by key; keys are relative to this store."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object. Deleting a missing key is not an error, so retries are always safe."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object below `prefix`; returns how many were deleted."""

    @abstractmethod
    def child(self, prefix: str) -> ObjectStore:
        """A store rooted at `prefix` inside this one."""

    @abstractmethod
    def check(self) -> None:
        """Cheap reachability/permission probe that creates nothing; raises StorageError on problems."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
