"""Local-directory backend: the default storage, and what tests and single-machine clusters use.

Every write goes to a temporary file in the destination's directory and is moved into place with
os.replace, so readers (another rank, `orch` on the same machine) see the old object or the new one,
never half of one. Directories are created on demand and pruned when they become empty, so the tree
mirrors exactly the set of keys, like an object store.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from orchestrator.storage.base import (
    NotFound,
    ObjectInfo,
    ObjectStore,
    StorageError,
    check_key,
    check_prefix,
    check_range,
)

# In-progress writes are named ".<name>.<random>.orch-tmp" and never listed.
TMP_SUFFIX = ".orch-tmp"
_COPY_CHUNK = 1024 * 1024


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def atomic_write(dest: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create `dest` (and its parents) with the bytes `write` produces, atomically and durably."""
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
    for attempt in range(3):
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # os.open (not mkstemp) so the final file gets the usual umask-based permissions, not 0600.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileNotFoundError:
            # A concurrent delete pruned the freshly created (still empty) parent; make it again.
            if attempt == 2:
                raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _copy_from(path: Path) -> Callable[[BinaryIO], None]:
    def write(out: BinaryIO) -> None:
        with open(path, "rb") as src:
            shutil.copyfileobj(src, out, _COPY_CHUNK)

    return write


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path, top: Path | None = None) -> None:
        root = Path(root)
        if not root.is_absolute():
            raise ValueError(f"LocalStore root must be absolute, got {str(root)!r}")
        self.root = root
        self.uri = root.as_uri()
        # The storage location the user named (children share it), resolved once: nothing under it may lead
        # outside it through a symlink that someone with write access planted.
        self._top = top if top is not None else root.resolve()

    # -- helpers -------------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self._inside(self.root / check_key(key), key)

    def _inside(self, path: Path, key: str) -> Path:
        if not path.resolve().is_relative_to(self._top):
            raise StorageError(f"Storage {self.uri}: '{key}' leads outside the storage directory {self._top} "
                               "(through a symbolic link); refusing to follow it. Remove the link.")
        return path

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn OS errors about the store's files into one clear StorageError; missing keys into NotFound."""
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            if action != "read":  # when writing, a missing folder or a file in the way is a setup problem
                raise self._os_error(action, key, exc) from exc
            raise NotFound(f"Storage {self.uri}: no object at '{key}'.") from exc
        except OSError as exc:
            raise self._os_error(action, key, exc) from exc

    def _os_error(self, action: str, key: str, exc: OSError) -> StorageError:
        return StorageError(
            f"Storage {self.uri}: cannot {action} '{key}': {exc.strerror or exc}. Check that the directory "
            "exists, is writable by this user and that the disk is not full, or fix the 'storage' field."
        )

    def _prune_empty_dirs(self, start: Path) -> None:
        """Remove `start` and its ancestors while they are empty, stopping at (and keeping) the root."""
        current = start
        while current != self.root and current.is_relative_to(self.root):
            try:
                current.rmdir()
            except OSError:  # not empty, already gone, or not ours to remove: all mean stop here
                return
            current = current.parent

    # -- ObjectStore ---------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors("write", key):
            atomic_write(path, lambda f: f.write(data))

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors("read", key):
            return path.read_bytes()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, length)
        path = self._path(key)
        with self._errors("read", key), open(path, "rb") as f:
            f.seek(start)
            return f.read(length)

    def put_file(self, key: str, path: str | Path) -> None:
        dest = self._path(key)
        source = Path(path)
        source.stat()  # a missing *source* is the caller's FileNotFoundError, not a missing object
        with self._errors("write", key):
            atomic_write(dest, _copy_from(source))

    def get_file(self, key: str, path: str | Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFound(f"Storage {self.uri}: no object at '{key}'.")
        with self._errors("read", key):
            atomic_write(Path(path), _copy_from(source))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = check_prefix(prefix)
        base = self._inside(self.root / prefix, prefix) if prefix else self.root
        found: list[ObjectInfo] = []
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                if _is_tmp(name):
                    continue
                full = Path(dirpath, name)
                try:
                    st = full.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                found.append(ObjectInfo(
                    key=full.relative_to(self.root).as_posix(),
                    size=st.st_size,
                    mtime=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc),
                ))
        found.sort(key=lambda info: info.key)
        return found

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():  # a "folder" is not an object, so there is nothing to delete
            return
        with self._errors("delete", key), contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
        self._prune_empty_dirs(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix)
        deleted = 0
        for info in self.list(prefix):
            path = self.root / info.key
            with self._errors("delete", info.key), contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted += 1
        base = self._inside(self.root / prefix, prefix) if prefix else self.root
        for dirpath, _dirnames, _filenames in os.walk(base, topdown=False):
            if Path(dirpath) != self.root:
                with contextlib.suppress(OSError):  # still holds an in-progress write: leave it
                    os.rmdir(dirpath)
        self._prune_empty_dirs(base.parent)
        return deleted

    def child(self, prefix: str) -> LocalStore:
        prefix = check_prefix(prefix)
        return LocalStore(self.root / prefix, self._top) if prefix else LocalStore(self.root, self._top)

    def check(self) -> None:
        # Find what exists: the root itself, or the nearest ancestor it would be created in.
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(
                f"Storage {self.uri}: {existing} exists but is not a directory. Remove it or choose another "
                "'storage' path."
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(
                f"Storage {self.uri}: directory {existing} is not writable by this user. Fix its permissions "
                "or choose another 'storage' path."
            )
