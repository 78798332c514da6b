"""Tune pickles the campaign's filesystem into tuner.pkl and experiment_state: it must hold no credentials;
each process resolves them itself from its environment."""

from __future__ import annotations

import pickle

from orchestrator.runtime.campaign.driver import tune_storage
from orchestrator.storage.s3 import S3Store

ACCESS, SECRET, TOKEN = "AKIAEXAMPLEACCESS01", "wJalrXUtnFEMI-secret-value-example", "session-token-example-01"


def test_pickled_tune_filesystem_carries_no_aws_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    path, filesystem = tune_storage(S3Store("bucket", "campaigns/c1"))
    assert path == "bucket/campaigns/c1"
    blob = pickle.dumps(filesystem)
    for value in (ACCESS, SECRET, TOKEN):
        assert value.encode() not in blob
    assert pickle.loads(blob).type_name == "s3"
