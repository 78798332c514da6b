"""One S3 client per process and AWS settings: stores opened per operation (the scheduler's reconcile) must not
each build one, and a change of settings must still take effect."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestrator.storage import open_store
from orchestrator.storage.s3_client import settings_fingerprint, shared_client
from tests.s3server import S3Server


def client_of(uri: str):  # noqa: ANN201 - a boto3 client
    store = open_store(uri)
    store.check()
    return store._client()  # type: ignore[attr-defined]


def test_stores_share_one_client_until_a_setting_changes(
    s3_server: S3Server, s3_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = client_of(s3_env)
    assert client_of(s3_env) is first
    assert client_of(f"{s3_env}/jobs/some-job") is first

    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    second = client_of(s3_env)
    assert second is not first and second.meta.region_name == "eu-west-3"

    # An edit of the AWS config file (a new profile, a rotated key) counts as a change too.
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = eu-west-3\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    third = client_of(s3_env)
    assert third is not second
    config.write_text("[default]\nregion = eu-west-3\nmax_attempts = 3\n")
    assert client_of(s3_env) is not third


def test_the_cache_key_holds_no_secret(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-not-in-any-key")
    key = settings_fingerprint()
    assert len(key) == 64 and "s3cr3t" not in key
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another-secret")
    assert settings_fingerprint() != key


def test_threads_get_the_same_client(s3_env: str) -> None:
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(shared_client())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8 and all(client is got[0] for client in got)
