"""Tune's experiment state lives in the campaign's own store: a local directory or S3 (pyarrow over our S3 store)."""

from __future__ import annotations

from pyarrow import fs

from orchestrator.runtime.campaign.driver import TUNE_DIR, tune_storage
from orchestrator.storage import LocalStore, open_store


def test_local_campaign_store_is_a_plain_directory(tmp_path):
    path, filesystem = tune_storage(LocalStore(tmp_path / "campaigns" / "c-1"))
    assert path == str(tmp_path / "campaigns" / "c-1") and filesystem is None


def test_s3_campaign_store_is_reached_through_pyarrow_with_the_same_settings(s3_env):
    store = open_store(s3_env).child("campaigns/c-1")
    path, filesystem = tune_storage(store)
    assert isinstance(filesystem, fs.PyFileSystem)  # our S3 store behind pyarrow's interface (tune_fs.py)
    assert path == f"{store.bucket}/{store.prefix}"
    # What Tune writes there (experiment_state-*.json, tuner.pkl) is in the campaign's store, next to campaign.json.
    with filesystem.open_output_stream(f"{path}/{TUNE_DIR}/experiment_state-x.json") as out:
        out.write(b'{"trials": []}')
    assert store.get_bytes(f"{TUNE_DIR}/experiment_state-x.json") == b'{"trials": []}'
    store.put_bytes("campaign.json", b"{}")
    names = {info.path.rsplit("/", 1)[-1] for info in filesystem.get_file_info(fs.FileSelector(path))}
    assert {"campaign.json", TUNE_DIR} <= names
