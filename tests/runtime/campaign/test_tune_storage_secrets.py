"""Tune pickles the campaign's filesystem into tuner.pkl and experiment_state: it must hold no credentials;
each process resolves them itself from its environment. And it writes plain keys: no directory markers."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow.fs as pafs

from orchestrator.runtime.campaign.driver import tune_storage
from orchestrator.storage.s3 import S3Store
from tests.s3server import S3Server

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
    assert pickle.loads(blob).type_name == filesystem.type_name


def test_what_tune_does_with_its_filesystem_leaves_plain_keys_only(s3_env: str, s3_server: S3Server,
                                                                   tmp_path: Path) -> None:
    bucket = s3_env.removeprefix("s3://").split("/")[0]
    path, fs = tune_storage(S3Store(bucket, "campaigns/c1"))
    fs = pickle.loads(pickle.dumps(fs))  # as a trial or a restored driver gets it
    local = tmp_path / "exp"
    (local / "trial_a" / "sub").mkdir(parents=True)
    (local / "trial_a" / "params.json").write_text("{}")
    (local / "trial_a" / "sub" / "events").write_bytes(b"x" * 1000)
    (local / "experiment_state.json").write_text('{"a": 1}')

    fs.create_dir(f"{path}/tune")  # what Ray Train's storage context and Tune call first
    with fs.open_output_stream(f"{path}/tune/.validate_storage_marker"):
        pass
    pafs.copy_files(str(local), f"{path}/tune", destination_filesystem=fs)  # Tune's sync of its local state
    fs.delete_file(f"{path}/tune/.validate_storage_marker")
    fs.move(f"{path}/tune/experiment_state.json", f"{path}/tune/experiment_state-2.json")
    fs.delete_dir(f"{path}/tune/trial_a/sub")  # the folder's last file goes: no marker is left for it

    with fs.open_input_stream(f"{path}/tune/experiment_state-2.json") as stream:
        assert stream.read() == b'{"a": 1}'
    info = {i.path: i.type for i in fs.get_file_info(pafs.FileSelector(f"{path}/tune", recursive=True))}
    assert info == {f"{path}/tune/experiment_state-2.json": pafs.FileType.File,
                    f"{path}/tune/trial_a/params.json": pafs.FileType.File,
                    f"{path}/tune/trial_a": pafs.FileType.Directory}
    assert fs.get_file_info(f"{path}/tune").type == pafs.FileType.Directory
    assert fs.get_file_info(f"{path}/nothing").type == pafs.FileType.NotFound

    objects = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    keys = sorted(o["Key"] for o in objects)
    assert keys == ["campaigns/c1/tune/experiment_state-2.json", "campaigns/c1/tune/trial_a/params.json"]
    assert not [o["Key"] for o in objects if o["Key"].endswith("/") or o["Size"] == 0]
