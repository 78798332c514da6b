"""S3 failures must become one clear StorageError naming the URI and the setting to fix, never a secret."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from botocore.stub import Stubber

from orchestrator.storage import NotFound, StorageError, open_store
from orchestrator.storage.s3 import S3Store
from orchestrator.storage.s3_client import resolve_addressing_style
from tests.s3server import SECRET_ACCESS_KEY, S3Server, free_port


def bucket_root(s3_env: str) -> S3Store:
    """The test bucket without a prefix.

    With credential checking on, moto (5.2) wrongly rejects list requests whose Prefix holds a '/'
    (see tests/s3server.py), so credential tests use a store whose check() lists with an empty prefix.
    """
    store = open_store(s3_env.rsplit("/", 1)[0])
    assert isinstance(store, S3Store)
    return store


def assert_clean(error: StorageError, *secrets: str) -> None:
    message = str(error)
    for secret in (SECRET_ACCESS_KEY, *secrets):
        assert secret not in message
    assert "\n" not in message  # one paragraph


def test_missing_bucket(s3_env: str) -> None:
    store = open_store("s3://no-such-bucket-4711/some/prefix")
    operations = (store.check, lambda: store.put_bytes("k", b"x"), lambda: store.get_bytes("k"), store.list)
    for operation in operations:
        with pytest.raises(StorageError) as info:
            operation()
        assert not isinstance(info.value, NotFound)
        assert not info.value.retryable
        assert str(info.value) == (
            "Storage s3://no-such-bucket-4711/some/prefix: bucket 'no-such-bucket-4711' does not exist. "
            "Create it or fix the 'storage' field."
        )


def test_unknown_access_key_id(s3_server: S3Server, s3_env: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="orchestrator")
    store = bucket_root(s3_env)
    with s3_server.enforce_credentials(), pytest.raises(StorageError) as info:
        store.check()  # the fixture's dummy key id is not one moto issued
    assert "access key id" in str(info.value) and "AWS_ACCESS_KEY_ID" in str(info.value)
    assert store.uri in str(info.value)
    assert not info.value.retryable
    assert_clean(info.value)
    assert SECRET_ACCESS_KEY not in caplog.text


def test_wrong_secret(
    s3_server: S3Server, s3_env: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="orchestrator")
    with s3_server.enforce_credentials() as (key_id, good_secret):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)  # the secret stays the fixture's (wrong) one
        with pytest.raises(StorageError) as info:
            bucket_root(s3_env).check()
        assert "AWS_SECRET_ACCESS_KEY" in str(info.value)
        assert not info.value.retryable
        assert_clean(info.value, good_secret)
        # The control: the same request with the right secret works.
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", good_secret)
        bucket_root(s3_env).check()
        bucket_root(s3_env).put_bytes("signed", b"ok")
    assert SECRET_ACCESS_KEY not in caplog.text and good_secret not in caplog.text


def test_unreachable_endpoint_is_retried_then_reported(
    s3_env: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("ORCH_STORAGE_RETRIES", "2")
    caplog.set_level(logging.WARNING, logger="orchestrator")
    with pytest.raises(StorageError) as info:
        open_store(s3_env).check()
    message = str(info.value)
    assert info.value.retryable
    assert endpoint in message and "AWS_ENDPOINT_URL" in message and s3_env in message
    assert "gave up after 3 attempts" in message
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 2
    assert_clean(info.value)


def test_missing_credentials(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # do not wait for an instance-metadata service
    with pytest.raises(StorageError) as info:
        open_store(s3_env).check()
    assert "AWS_ACCESS_KEY_ID" in str(info.value) and "AWS_PROFILE" in str(info.value)
    assert not info.value.retryable


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix", "s3://AKIAXX:s3cr3t@bucket/p", "s3://b/a/../c"])
def test_invalid_s3_uris(uri: str) -> None:
    with pytest.raises(StorageError) as info:
        open_store(uri)
    assert "'storage' field" in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_client_settings_come_from_the_environment(
    s3_server: S3Server, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def client() -> Any:
        store = open_store(s3_env)
        store.check()
        return store._client()  # type: ignore[attr-defined]

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert client().meta.region_name == "us-east-1"
    assert client().meta.config.s3["addressing_style"] == "path"  # custom endpoint -> path style
    monkeypatch.setenv("AWS_REGION", "eu-west-3")  # wins over AWS_DEFAULT_REGION, as in the other AWS SDKs
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert client().meta.region_name == "eu-west-3"
    assert client().meta.config.s3["addressing_style"] == "path"
    monkeypatch.setenv("ORCH_S3_ADDRESSING_STYLE", "bogus")
    with pytest.raises(StorageError, match="ORCH_S3_ADDRESSING_STYLE"):
        open_store(s3_env).check()


@pytest.mark.parametrize(
    ("setting", "custom_endpoint", "expected"),
    [(None, True, "path"), (None, False, "auto"), ("", True, "path"), ("virtual", True, "virtual"),
     (" Path ", False, "path"), ("auto", True, "auto")],
)
def test_addressing_style(setting: str | None, custom_endpoint: bool, expected: str) -> None:
    assert resolve_addressing_style(setting, custom_endpoint) == expected


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("error", "retryable", "fragment"),
    [
        (client_error("SlowDown", 503), True, "temporary"),
        (client_error("RequestTimeout", 400), True, "temporary"),
        (client_error("InternalError", 500), True, "temporary"),
        (client_error("", 502), True, "temporary"),
        (client_error("Throttling", 400), True, "temporary"),
        (EndpointConnectionError(endpoint_url="http://x"), True, "unreachable"),
        (ReadTimeoutError(endpoint_url="http://x"), True, "unreachable"),
        (client_error("NoSuchBucket", 404), False, "does not exist"),
        (client_error("AccessDenied", 403), False, "access denied"),
        (client_error("InvalidAccessKeyId", 403), False, "AWS_ACCESS_KEY_ID"),
        (client_error("SignatureDoesNotMatch", 403), False, "AWS_SECRET_ACCESS_KEY"),
        (client_error("ExpiredToken", 400), False, "AWS_SESSION_TOKEN"),
        (client_error("PermanentRedirect", 301), False, "AWS_REGION"),
        (client_error("InvalidArgument", 400), False, "InvalidArgument"),
    ],
)
def test_error_classification(error: Exception, retryable: bool, fragment: str) -> None:
    mapped = S3Store("b", "p")._classify(error, "write", "k")
    assert mapped is not None and mapped.retryable is retryable
    assert fragment in str(mapped) and str(mapped).startswith("Storage s3://b/p: ")


def test_404_means_missing_key_or_missing_bucket() -> None:
    store = S3Store("b", "p")
    assert isinstance(store._classify(client_error("404", 404), "read", "k"), NotFound)
    assert "bucket 'b' does not exist" in str(store._classify(client_error("404", 404), "list", None))


def test_transfer_wrappers_are_unwrapped() -> None:
    try:
        try:
            raise client_error("SlowDown", 503)
        except ClientError:
            raise S3UploadFailedError("Failed to upload x to b/k: ...") from None
    except S3UploadFailedError as wrapped:
        mapped = S3Store("b")._classify(wrapped, "write", "k")
    assert mapped is not None and mapped.retryable


def test_unrelated_errors_are_not_storage_errors() -> None:
    assert S3Store("b")._classify(ValueError("a bug"), "write", "k") is None


def test_store_retries_throttling(s3_env: str, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(s3_env)
    client = store._client()  # type: ignore[attr-defined]
    with Stubber(client) as stub:
        stub.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
        stub.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
        stub.add_response("put_object", {})
        store.put_bytes("k", b"x")
        stub.assert_no_pending_responses()
    assert len([r for r in caplog.records if "SlowDown" in r.getMessage()]) == 2


def test_unknown_profile(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(StorageError, match="no-such-profile") as info:
        open_store(s3_env).check()
    assert not info.value.retryable
    assert_clean(info.value)


def test_errors_survive_pickling() -> None:
    # Ray sends exceptions between processes by pickling them.
    error = pickle.loads(pickle.dumps(StorageError("Storage s3://b: SlowDown.", retryable=True)))
    assert (type(error), str(error), error.retryable) == (StorageError, "Storage s3://b: SlowDown.", True)
    missing = pickle.loads(pickle.dumps(NotFound("Storage s3://b: no object at 'k'.")))
    assert isinstance(missing, KeyError) and str(missing) == "Storage s3://b: no object at 'k'."
    assert not missing.retryable
