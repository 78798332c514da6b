"""Ranged reads: streaming readers fetch only the bytes they use, on both backends, with get_bytes' errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.stub import Stubber

from orchestrator.storage import NotFound, ObjectStore, StorageError, open_store

DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(str(tmp_path / "store-root"))
    return open_store(request.getfixturevalue("s3_env"))


def test_ranges_inside_at_and_past_the_end(store: ObjectStore) -> None:
    store.put_bytes("shards/a.bin", DATA)
    assert store.get_range("shards/a.bin", 0, 10) == DATA[:10]
    assert store.get_range("shards/a.bin", 5000, 1234) == DATA[5000:6234]
    assert store.get_range("shards/a.bin", len(DATA) - 3, 100) == DATA[-3:]  # clipped at the end
    assert store.get_range("shards/a.bin", len(DATA), 10) == b""
    assert store.get_range("shards/a.bin", len(DATA) + 50, 10) == b""
    assert store.get_range("shards/a.bin", 7, 0) == b""


def test_missing_key_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound) as info:
        store.get_range("shards/missing.bin", 0, 10)
    assert "shards/missing.bin" in str(info.value) and not info.value.retryable


def test_negative_range_is_a_programming_error(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.get_range("k", -1, 10)


def test_s3_range_is_retried_and_sent_as_a_range_header(s3_env: str) -> None:
    store = open_store(s3_env)
    client = store._client()  # type: ignore[attr-defined]
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code="SlowDown", http_status_code=503)
        stub.add_response("get_object", {"Body": _body(b"xyz")},
                          {"Bucket": store.bucket, "Key": store.prefix + "/k", "Range": "bytes=100-102"})  # type: ignore[attr-defined]
        assert store.get_range("k", 100, 3) == b"xyz"
        stub.assert_no_pending_responses()


def test_s3_range_on_a_missing_bucket_names_it(s3_env: str) -> None:
    store = open_store("s3://no-such-bucket-4712/data")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-4712' does not exist") as info:
        store.get_range("k", 0, 1)
    assert not isinstance(info.value, NotFound)


def _body(data: bytes):  # noqa: ANN202 - botocore's StreamingBody
    import io

    from botocore.response import StreamingBody

    return StreamingBody(io.BytesIO(data), len(data))
