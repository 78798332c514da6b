"""Object storage for job specs, metrics, results and checkpoints: a local directory or an S3 bucket.

    store = open_store("s3://bucket/prefix")   # or "file:///abs/path", or a plain local path
    store.check()                               # fail early, with a message that says what to fix
    jobs = store.child("jobs/my-job")
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit

from orchestrator.storage.base import NotFound, ObjectInfo, ObjectStore, StorageError
from orchestrator.storage.local import LocalStore

__all__ = ["LocalStore", "NotFound", "ObjectInfo", "ObjectStore", "StorageError", "open_store"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_FORMS = "s3://bucket/prefix, file:///absolute/path or a local path"


def open_store(uri: str) -> ObjectStore:
    """The store for a 'storage' setting. Creates nothing and contacts nothing (see ObjectStore.check)."""
    uri = uri.strip()
    if not uri:
        raise StorageError(f"Storage URI is empty. Set the 'storage' field to {_FORMS}.")
    if uri.startswith("s3://"):
        from orchestrator.storage.s3 import S3Store  # boto3 is imported only by those who use S3

        return S3Store.from_uri(uri)
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise StorageError(
                f"Storage {uri}: a file URI needs an absolute path and no host, like file:///data/orch. "
                "Fix the 'storage' field."
            )
        return LocalStore(os.path.normpath(path))
    if _SCHEME.match(uri):
        raise StorageError(f"Storage {uri}: unsupported storage URI. Set the 'storage' field to {_FORMS}.")
    return LocalStore(os.path.abspath(os.path.expanduser(uri)))
