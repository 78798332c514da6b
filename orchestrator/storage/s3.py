"""S3-compatible backend (AWS, MinIO, Ceph RGW, R2, rclone serve s3, moto) on boto3.

Endpoint, credentials, region and CA bundle come only from the standard AWS settings (environment,
AWS_PROFILE, ~/.aws files), so the job spec never holds secrets. The boto3 client (one per process and AWS
settings, orchestrator/storage/s3_client.py) is taken lazily and dropped when pickling, so a store can be sent to
Ray workers, which then use their own environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timezone
from pathlib import Path
from typing import Any, TypeVar

from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from orchestrator.storage.base import (
    NotFound,
    ObjectInfo,
    ObjectStore,
    StorageError,
    check_key,
    check_prefix,
    check_range,
    join_key,
)
from orchestrator.storage.local import atomic_write
from orchestrator.storage.retry import with_retries
from orchestrator.storage.s3_client import shared_client

T = TypeVar("T")

MiB = 1024 * 1024
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=8 * MiB,
    multipart_chunksize=8 * MiB,
    max_concurrency=4,
    # The CRT transfer client (used when awscrt happens to be installed) ignores parts of this config.
    preferred_transfer_client="classic",
)
DELETE_BATCH = 1000  # the DeleteObjects limit
LIST_PAGE_SIZE = 1000  # the ListObjectsV2 maximum

RETRYABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "OperationAborted",
})
WRONG_REGION_CODES = frozenset({
    "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
})
EXPIRED_CODES = frozenset({"ExpiredToken", "InvalidToken", "TokenRefreshRequired"})
ENDPOINT_HINT = "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 (or endpoint_url in the AWS profile)"
CREDENTIALS_HINT = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix')."""
    rest = uri[len("s3://"):] if uri.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket or "@" in bucket or ":" in bucket:
        shown = re.sub(r"//[^/]*@", "//***@", uri)  # never echo credentials someone put in the URI
        raise StorageError(
            f"Storage {shown}: not a valid S3 URI. Write the 'storage' field as s3://bucket/prefix; the "
            f"endpoint and credentials come from {ENDPOINT_HINT} and {CREDENTIALS_HINT}, never from the URI."
        )
    try:
        return bucket, check_prefix(prefix)
    except ValueError as exc:
        raise StorageError(f"Storage {uri}: invalid prefix: {exc}. Fix the 'storage' field.") from exc


def _http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


class S3Store(ObjectStore):
    page_size = LIST_PAGE_SIZE

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = check_prefix(prefix)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client_obj = client

    @classmethod
    def from_uri(cls, uri: str) -> S3Store:
        return cls(*parse_s3_uri(uri))

    # -- pickling: the client holds sockets and credentials; workers build their own --------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client_obj"] = None
        return state

    # -- client and error handling -------------------------------------------------------------------

    def _client(self) -> Any:
        # Only called inside _call, so configuration errors (unknown profile...) are classified there too.
        # One client per process and AWS settings: building one costs ~0.1 CPU-second (see s3_client.py).
        if self._client_obj is None:
            self._client_obj = shared_client()
        return self._client_obj

    def _endpoint(self) -> str:
        client = self._client_obj
        return client.meta.endpoint_url if client is not None else "the configured endpoint"

    def _classify(self, exc: Exception, op: str, key: str | None) -> StorageError | None:
        """Map a boto3/botocore failure to a StorageError whose message says what to fix (never a secret)."""
        if isinstance(exc, StorageError):
            return exc
        # boto3's transfer helpers wrap the real error; classify that instead.
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
            exc = exc.__context__
        if isinstance(exc, RetriesExceededError) and isinstance(exc.last_exception, Exception):
            exc = exc.last_exception
        where = f"Storage {self.uri}"
        target = f"'{key}'" if key else f"bucket '{self.bucket}'"
        if isinstance(exc, ClientError):
            return self._classify_client_error(exc, op, key)
        if isinstance(exc, SSLError):
            return StorageError(
                f"{where}: TLS verification failed for {self._endpoint()}. If the endpoint uses a private "
                "CA, point AWS_CA_BUNDLE at its certificate bundle; otherwise check the endpoint URL in "
                f"{ENDPOINT_HINT}."
            )
        if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
            return StorageError(
                f"{where}: cannot {op} {target}: the S3 endpoint {self._endpoint()} is unreachable or "
                f"dropped the connection ({type(exc).__name__}). Check that the server is running and that "
                f"{ENDPOINT_HINT} is right.",
                retryable=True,
            )
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(f"{where}: no usable AWS credentials were found. Set {CREDENTIALS_HINT}.")
        if isinstance(exc, BotoCoreError):
            # Configuration problems (unknown profile, bad config file, invalid bucket name): botocore's
            # own message names the setting; none of these messages carry secret values.
            return StorageError(
                f"{where}: cannot {op} {target}: {exc}. Check the AWS settings and the 'storage' field."
            )
        return None

    def _classify_client_error(self, exc: ClientError, op: str, key: str | None) -> StorageError:
        code, status = _error_code(exc), _http_status(exc)
        where = f"Storage {self.uri}"
        target = f"'{key}'" if key else f"bucket '{self.bucket}'"
        if code in RETRYABLE_CODES or status >= 500 or status == 429:
            return StorageError(
                f"{where}: cannot {op} {target}: the server answered {code or status} (a temporary failure).",
                retryable=True,
            )
        if code == "NoSuchBucket" or (status == 404 and key is None):
            return StorageError(
                f"{where}: bucket '{self.bucket}' does not exist. Create it or fix the 'storage' field."
            )
        if code in ("NoSuchKey", "NotFound") or status == 404:
            return NotFound(f"{where}: no object at '{key}'.")
        if code == "InvalidAccessKeyId":
            return StorageError(
                f"{where}: the server does not know the access key id in use. Check AWS_ACCESS_KEY_ID "
                "(or the credentials of AWS_PROFILE) and that they are meant for this endpoint."
            )
        if code == "SignatureDoesNotMatch":
            return StorageError(
                f"{where}: the secret key does not match the access key id. Check AWS_SECRET_ACCESS_KEY "
                "(or the credentials of AWS_PROFILE)."
            )
        if code in EXPIRED_CODES:
            return StorageError(
                f"{where}: the session credentials are expired or invalid. Refresh AWS_SESSION_TOKEN "
                "(or log in again with the AWS_PROFILE in use)."
            )
        if code in WRONG_REGION_CODES or status == 301:
            return StorageError(
                f"{where}: bucket '{self.bucket}' is in another region. Set AWS_REGION (or "
                "AWS_DEFAULT_REGION) to the bucket's region."
            )
        if status == 403 or code in ("AccessDenied", "AllAccessDisabled", "Forbidden"):
            return StorageError(
                f"{where}: access denied to {op} {target}. The credentials in use ({CREDENTIALS_HINT}) are "
                f"wrong or lack s3:ListBucket/GetObject/PutObject/DeleteObject permission on bucket "
                f"'{self.bucket}'."
            )
        message = exc.response.get("Error", {}).get("Message") or ""
        return StorageError(f"{where}: cannot {op} {target}: the server answered {code or status}. {message}")

    def _call(self, op: str, key: str | None, operation: Callable[[], T]) -> T:
        return with_retries(
            operation,
            lambda exc: self._classify(exc, op, key),
            what=f"Storage {self.uri}: {op} '{key or ''}'",
        )

    def _full_key(self, key: str) -> str:
        return join_key(self.prefix, check_key(key))

    # -- ObjectStore ---------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full_key(key)
        self._call("write", key, lambda: self._client().put_object(Bucket=self.bucket, Key=full, Body=data))

    def get_bytes(self, key: str) -> bytes:
        full = self._full_key(key)
        # Reading the body happens inside the retried call, so a connection dropped mid-body is retried too.
        return self._call(
            "read", key, lambda: self._client().get_object(Bucket=self.bucket, Key=full)["Body"].read()
        )

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, length)
        if length == 0:
            return b""
        full = self._full_key(key)

        def ranged() -> bytes:
            try:
                response = self._client().get_object(Bucket=self.bucket, Key=full,
                                                     Range=f"bytes={start}-{start + length - 1}")
            except ClientError as exc:
                # A range that starts at or past the end is "unsatisfiable" (416); a missing key still answers 404.
                if _error_code(exc) == "InvalidRange" or _http_status(exc) == 416:
                    return b""
                raise
            return response["Body"].read()

        # Like get_bytes, the body is read inside the retried call, so a connection dropped mid-range is retried.
        return self._call("read", key, ranged)

    def put_file(self, key: str, path: str | Path) -> None:
        full = self._full_key(key)
        source = Path(path)
        source.stat()  # a missing *source* is the caller's FileNotFoundError, not a storage failure
        self._call("write", key, lambda: self._client().upload_file(
            str(source), self.bucket, full, Config=TRANSFER_CONFIG
        ))

    def get_file(self, key: str, path: str | Path) -> None:
        full = self._full_key(key)

        def download(out: Any) -> None:
            out.seek(0)
            out.truncate()  # a retry starts over
            self._client().download_fileobj(self.bucket, full, out, Config=TRANSFER_CONFIG)

        def write(out: Any) -> None:
            self._call("read", key, lambda: download(out))

        atomic_write(Path(path), write)

    def exists(self, key: str) -> bool:
        full = self._full_key(key)

        def head() -> bool:
            try:
                self._client().head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _http_status(exc) == 404:
                    return False
                raise
            return True

        return self._call("check", key, head)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        query = join_key(self.prefix, prefix)
        request: dict[str, Any] = {
            "Bucket": self.bucket, "Prefix": f"{query}/" if query else "", "MaxKeys": self.page_size,
        }
        found: list[ObjectInfo] = []
        while True:
            page = self._call("list", prefix or None, lambda: self._client().list_objects_v2(**request))
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):  # a directory marker made by another tool is not an object
                    continue
                mtime = obj["LastModified"].astimezone(timezone.utc)
                found.append(ObjectInfo(key=obj["Key"][len(root):], size=obj["Size"], mtime=mtime))
            if not page.get("IsTruncated"):
                break
            request["ContinuationToken"] = page["NextContinuationToken"]
        found.sort(key=lambda info: info.key)
        return found

    def delete(self, key: str) -> None:
        full = self._full_key(key)
        self._call("delete", key, lambda: self._client().delete_object(Bucket=self.bucket, Key=full))

    def delete_prefix(self, prefix: str) -> int:
        keys = [join_key(self.prefix, info.key) for info in self.list(prefix)]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            self._call("delete", check_prefix(prefix) or None, lambda batch=batch: self._delete_batch(batch))
        return len(keys)

    def _delete_batch(self, keys: list[str]) -> None:
        response = self._client().delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
        )
        # DeleteObjects answers 200 even when some keys failed; the failures are only in the body.
        errors = response.get("Errors") or []
        if errors:
            codes = sorted({str(error.get("Code")) for error in errors})
            raise StorageError(
                f"Storage {self.uri}: could not delete {len(errors)} object(s), e.g. "
                f"'{errors[0].get('Key')}' ({', '.join(codes)}). Re-running the deletion is safe.",
                retryable=all(code in RETRYABLE_CODES for code in codes),
            )

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, join_key(self.prefix, check_prefix(prefix)), client=self._client_obj)

    def check(self) -> None:
        # ListObjectsV2 (unlike HeadBucket) returns an error body, so wrong key id, wrong secret, missing
        # bucket and missing permission can be told apart. It needs s3:ListBucket, which list() needs too.
        root = f"{self.prefix}/" if self.prefix else ""
        self._call(
            "list", None, lambda: self._client().list_objects_v2(Bucket=self.bucket, Prefix=root, MaxKeys=1)
        )
