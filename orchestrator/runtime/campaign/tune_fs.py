"""The filesystem Tune keeps a campaign's experiment state in, on S3: plain keys through the project's own S3 store.

Arrow's S3FileSystem writes zero-byte `dir/` marker objects (on every create_dir, which Tune and
`pyarrow.fs.copy_files` call for each folder, and after deleting the last file of a folder), which README
promises never appear in a bucket, and it would need credentials inside the object Tune pickles into the bucket.
This handler has no folders to create (a key's prefix exists once a key does), writes and reads whole objects
through `S3Store` (the standard AWS settings, our retry policy), and pickles as a bucket name only: each process
that unpickles it resolves its own credentials.
"""

from __future__ import annotations

import io
from typing import Any

from pyarrow import BufferReader, PythonFile
from pyarrow import fs as pafs

from orchestrator.storage import NotFound
from orchestrator.storage.s3 import S3Store


class _Upload(io.RawIOBase):
    """A write stream that stores its bytes as one object when closed (Tune writes small files only)."""

    def __init__(self, store: S3Store, key: str) -> None:
        super().__init__()
        self._store, self._key, self._buffer = store, key, io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._buffer.write(data)

    def close(self) -> None:
        if not self.closed:
            self._store.put_bytes(self._key, self._buffer.getvalue())
        super().close()


class PlainKeysS3Handler(pafs.FileSystemHandler):
    """pyarrow FileSystemHandler over one bucket; paths are `bucket/key` as Arrow's S3 filesystem spells them."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self._store: S3Store | None = None

    def __reduce__(self) -> tuple[Any, ...]:  # no client, no credentials
        return (PlainKeysS3Handler, (self.bucket,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlainKeysS3Handler) and other.bucket == self.bucket

    def __hash__(self) -> int:
        return hash(self.bucket)

    @property
    def store(self) -> S3Store:
        if self._store is None:
            self._store = S3Store(self.bucket)
        return self._store

    def _key(self, path: str) -> str:
        path = path.strip("/")
        if path == self.bucket:
            return ""
        if not path.startswith(self.bucket + "/"):
            raise FileNotFoundError(f"{path} is outside bucket {self.bucket}")
        return path[len(self.bucket) + 1:].strip("/")

    def _path(self, key: str) -> str:
        return f"{self.bucket}/{key}" if key else self.bucket

    def get_type_name(self) -> str:
        return "orch-s3"

    def normalize_path(self, path: str) -> str:
        return path.rstrip("/")

    def _info(self, key: str) -> pafs.FileInfo:
        if not key:
            return pafs.FileInfo(self.bucket, pafs.FileType.Directory)
        if self.store.exists(key):
            return pafs.FileInfo(self._path(key), pafs.FileType.File)
        kind = pafs.FileType.Directory if self.store.list(key) else pafs.FileType.NotFound
        return pafs.FileInfo(self._path(key), kind)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return [self._info(self._key(path)) for path in paths]

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        base = self._key(selector.base_dir)
        objects = self.store.list(base)
        if not objects:
            if selector.allow_not_found:
                return []
            raise FileNotFoundError(f"{selector.base_dir} does not exist")
        start = len(base) + 1 if base else 0
        files: dict[str, pafs.FileInfo] = {}
        folders: set[str] = set()
        for obj in objects:
            rel = obj.key[start:]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                folders.add("/".join(parts[:depth]))
            if selector.recursive or len(parts) == 1:
                files[rel] = pafs.FileInfo(self._path(obj.key), pafs.FileType.File, size=obj.size, mtime=obj.mtime)
        if not selector.recursive:
            folders = {f for f in folders if "/" not in f}
        prefix = f"{base}/" if base else ""
        return [*files.values(), *(pafs.FileInfo(self._path(prefix + f), pafs.FileType.Directory)
                                   for f in sorted(folders))]

    def create_dir(self, path: str, recursive: bool) -> None:
        pass  # S3 has no folders: writing a key is all it takes, and markers are what we must not write

    def delete_dir(self, path: str) -> None:
        self.store.delete_prefix(self._key(path))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.store.delete_prefix(self._key(path))

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("refusing to empty a whole bucket")

    def delete_file(self, path: str) -> None:
        self.store.delete(self._key(path))

    def copy_file(self, src: str, dest: str) -> None:
        self.store.put_bytes(self._key(dest), self._read(src))

    def move(self, src: str, dest: str) -> None:
        source, target = self._key(src), self._key(dest)
        below = self.store.list(source)
        if not below:
            self.copy_file(src, dest)
            self.store.delete(source)
            return
        for obj in below:
            self.store.put_bytes(target + obj.key[len(source):], self.store.get_bytes(obj.key))
        self.store.delete_prefix(source)

    def _read(self, path: str) -> bytes:
        try:
            return self.store.get_bytes(self._key(path))
        except NotFound:
            raise FileNotFoundError(f"{path} does not exist") from None

    def open_input_stream(self, path: str) -> BufferReader:
        return BufferReader(self._read(path))

    def open_input_file(self, path: str) -> BufferReader:
        return BufferReader(self._read(path))

    def open_output_stream(self, path: str, metadata: Any) -> PythonFile:
        return PythonFile(_Upload(self.store, self._key(path)), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> PythonFile:
        raise NotImplementedError("S3 objects cannot be appended to")


def plain_keys_s3(bucket: str) -> pafs.PyFileSystem:
    return pafs.PyFileSystem(PlainKeysS3Handler(bucket))
