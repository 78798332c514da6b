"""Secrets reach the workers and nowhere else.

A job with S3 storage (the test server's secret key) and a secret-looking `env` entry runs to success; then
everything the job wrote or that describes it is searched for both secret values: every object in the
bucket, the ORCH_HOME tree (database included), `orch status/list --json`, `orch logs`, Ray's job info and
the Ray cluster's session directory. The one intended copy is the 0600 secrets file, removed when the job ends.
An S3 campaign's bucket is searched the same way, the encoded pickles of Tune's experiment state included.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
import stat
import tempfile
import textwrap
import urllib.request
import zlib
from pathlib import Path

import pytest
import yaml

from orchestrator.control.cluster_address import auth_headers
from tests.e2e.conftest import REPO, ray_jobs, wait_for
from tests.s3server import SECRET_ACCESS_KEY

pytestmark = pytest.mark.e2e

SPEC_SECRET = "sk-test-SECRET-123"
PLAIN_NAMED_SECRET = "plain-named-value-456"  # every env value is secret, not only secret-looking names
SECRETS = (SPEC_SECRET.encode(), SECRET_ACCESS_KEY.encode(), PLAIN_NAMED_SECRET.encode())

# A workload that refuses to train unless the secret env value arrived (compared by hash: never printed).
PROBE = textwrap.dedent('''
    import hashlib
    import os

    from orchestrator.workloads.mlp.train import train as mlp_train


    def train(ctx):
        seen = hashlib.sha256(os.environ.get("WANDB_API_KEY", "").encode()).hexdigest()
        if seen != os.environ["EXPECTED_KEY_SHA256"]:
            raise RuntimeError("WANDB_API_KEY did not reach the worker")
        if os.environ.get("PLAIN_SETTING") != "visible-value":
            raise RuntimeError("public_env did not reach the worker")
        return mlp_train(ctx)
''')


def leaks_in(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:  # sockets, files removed while we walk
            continue
        found += [f"{path}: {secret.decode()}" for secret in SECRETS if secret in data]
    return found


def tree(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_secrets_reach_workers_but_are_never_written(orch, s3_server, tmp_path):
    bucket = "secrets-e2e"
    s3_server.make_bucket(bucket)
    s3 = s3_server.env
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / "leakprobe.py").write_text(PROBE)
    job_id, submitted = orch.submit(
        "jobs/examples/mlp-digits.yaml", "name=secrets", "workload=leakprobe:train", f"working_dir={probe_dir}",
        f"storage=s3://{bucket}/runs", "scaling.num_workers=1", "train.steps=5", "train.warmup_steps=0",
        "train.eval_every=0", "train.eval_batches=1", "train.report_every=1", "checkpoint.every_steps=0",
        f"env.WANDB_API_KEY={SPEC_SECRET}", f"env.PLAIN_NAMED={PLAIN_NAMED_SECRET}",
        "public_env.PLAIN_SETTING=visible-value",
        f"env.EXPECTED_KEY_SHA256={hashlib.sha256(SPEC_SECRET.encode()).hexdigest()}",
        wait=False, extra_env=s3)

    # The one intended copy: a 0600 file in a 0700 directory, read by the driver and workers.
    secrets_file = orch.home / "secrets" / f"{job_id}.env"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_file.parent.stat().st_mode) == 0o700
    assert json.loads(secrets_file.read_text())["WANDB_API_KEY"] == SPEC_SECRET

    def finished() -> dict | None:
        status = json.loads(orch.run("status", job_id, "--json", extra_env=s3).stdout)
        return status if status["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    status = wait_for(finished, timeout=300, what=f"job {job_id} to finish", poll_s=1.0)
    assert status["state"] == "SUCCEEDED", status  # so the probe saw the secret, and S3 writes used the key
    assert not secrets_file.exists()  # no longer needed once the job succeeded

    outputs = [submitted.stdout, submitted.stderr,
               orch.run("status", job_id, "--json", extra_env=s3).stdout,
               orch.run("list", "--json", extra_env=s3).stdout,
               orch.run("logs", job_id, extra_env=s3).stdout]
    assert "orch: job" in outputs[-1]  # the logs really were read

    # Ray's view of the job: what anyone with dashboard access can read.
    address = orch.env["ORCH_RAY_ADDRESS"]
    info = ray_jobs(address).get_job_info(job_id)
    env_vars = info.runtime_env["env_vars"]
    assert env_vars["PLAIN_SETTING"] == "visible-value"
    assert not {"WANDB_API_KEY", "PLAIN_NAMED", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(env_vars)
    request = urllib.request.Request(f"{address}/api/jobs/", headers=auth_headers())
    with urllib.request.urlopen(request, timeout=30) as response:
        outputs.append(response.read().decode())
    outputs += [json.dumps(info.runtime_env), json.dumps(info.metadata), info.entrypoint, info.message or ""]
    assert not [o for o in outputs for secret in SECRETS if secret.decode() in o]

    # Every object in the bucket; the stored spec shows the secret's name, redacted.
    client = s3_server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert f"runs/jobs/{job_id}/result.json" in keys
    spec_yaml = client.get_object(Bucket=bucket, Key=f"runs/jobs/{job_id}/spec.yaml")["Body"].read().decode()
    assert "WANDB_API_KEY: '***redacted***'" in spec_yaml and "PLAIN_NAMED: '***redacted***'" in spec_yaml
    assert "PLAIN_SETTING: visible-value" in spec_yaml
    leaks = [key for key in keys for secret in SECRETS
             if secret in client.get_object(Bucket=bucket, Key=key)["Body"].read()]
    assert not leaks, leaks

    # Everything on disk: ORCH_HOME (database, scheduler log, secrets dir), the Ray session of the test
    # cluster (its logs, runtime_env resources), and Ray Train's own bookkeeping for this job.
    files = tree(orch.home) + tree(Path(orch.env["RAY_TMPDIR"]))
    files += tree(Path(tempfile.gettempdir()) / "orch-ray-results" / job_id)
    assert any(p.name == "jobs.db" for p in files)
    assert len(files) > 20, files
    assert not leaks_in(files)


CAMPAIGN_ACCESS_KEY_ID = "AKIACAMPAIGNLEAKTEST7"  # distinctive, so a hit is certainly this key
HEX_RUN = re.compile(rb"(?:[0-9a-fA-F]{2}){32,}")
B64_RUN = re.compile(rb"[A-Za-z0-9+/]{64,}={0,2}")


def decoded_views(data: bytes) -> list[bytes]:
    """The object's bytes plus what hex and base64 runs inside it decode to (Tune stores pickles hex-encoded in
    experiment_state), each also inflated if it is zlib data. Nothing is unpickled."""
    views = [data]
    for run in HEX_RUN.findall(data):
        views.append(bytes.fromhex(run.decode()))
    for run in B64_RUN.findall(data):
        with contextlib.suppress(ValueError, binascii.Error):
            views.append(base64.b64decode(run, validate=True))
    for view in list(views):
        with contextlib.suppress(zlib.error):
            views.append(zlib.decompress(view))
    return views


@pytest.mark.e2e_timeout(900)
def test_s3_campaign_leaves_no_secret_and_no_directory_marker_in_its_bucket(orch, s3_server, tmp_path):
    bucket = "secrets-campaign-e2e"
    s3_server.make_bucket(bucket)
    s3 = {**s3_server.env, "AWS_ACCESS_KEY_ID": CAMPAIGN_ACCESS_KEY_ID}  # the test server takes any key id
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / "leakprobe.py").write_text(PROBE)
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump({
        "name": "secrets-tune",
        "base": str(REPO / "jobs/examples/mlp-digits.yaml"),
        "storage": f"s3://{bucket}/runs",
        "overrides": {
            "workload": "leakprobe:train", "working_dir": str(probe_dir), "train.steps": 6,
            "train.warmup_steps": 0, "train.report_every": 3, "train.eval_every": 3, "train.eval_batches": 1,
            "checkpoint.every_steps": 3, "failure.max_restarts": 0,
            "env": {"WANDB_API_KEY": SPEC_SECRET, "PLAIN_NAMED": PLAIN_NAMED_SECRET,
                    "EXPECTED_KEY_SHA256": hashlib.sha256(SPEC_SECRET.encode()).hexdigest()},
            "public_env": {"PLAIN_SETTING": "visible-value"}},
        "search_space": {"train.lr": {"type": "grid", "values": [0.001, 0.01]}},
        "search": {"algorithm": "grid"},
        "metric": "eval_accuracy", "mode": "max",
        "trial_resources": {"num_workers": 1, "cpus_per_worker": 1},
    }))
    proc = orch.run("tune", str(campaign), "--wait", timeout=800, check=False, extra_env=s3)
    campaign_id = proc.stdout.strip().splitlines()[-1]
    status = json.loads(orch.run("status", campaign_id, "--json", extra_env=s3).stdout)
    # SUCCEEDED: so each trial's probe saw the env secret, and every S3 write used the keys.
    assert proc.returncode == 0 and status["state"] == "SUCCEEDED", (proc.stderr[-3000:], status)
    assert [t["state"] for t in status["trials"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert not (orch.home / "secrets" / f"{campaign_id}.env").exists()

    client = s3_server.client()
    objects = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
               for o in page.get("Contents", [])]
    keys = [o["Key"] for o in objects]
    tune_root = f"runs/campaigns/{campaign_id}/tune/"
    assert f"{tune_root}tuner.pkl" in keys and any(k.startswith(f"{tune_root}experiment_state") for k in keys)
    # Plain keys only (README): nothing ends in '/', and no zero-byte object stands for a folder of others.
    assert not [k for k in keys if k.endswith("/")]
    folders = {k.rsplit("/", 1)[0] for k in keys if "/" in k}
    assert not [o["Key"] for o in objects if o["Size"] == 0 and o["Key"] in folders]

    secrets = SECRETS + (CAMPAIGN_ACCESS_KEY_ID.encode(),)
    decoded_blobs = 0
    leaks = []
    for key in keys:
        views = decoded_views(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        decoded_blobs += len(views) - 1 if "experiment_state" in key else 0
        leaks += [f"{key}: {secret.decode()}" for view in views for secret in secrets if secret in view]
    assert decoded_blobs > 0  # the experiment state's encoded pickles were really looked into
    assert not leaks, leaks
    record = (orch.home / "jobs.db").read_bytes()
    assert not [s for s in secrets if s in record]


@pytest.mark.e2e_timeout(900)
def test_cancel_removes_the_secrets_file_and_resume_takes_env_values_from_its_environment(orch, tmp_path):
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    (probe_dir / "leakprobe.py").write_text(PROBE)
    env = {"WANDB_API_KEY": SPEC_SECRET, "EXPECTED_KEY_SHA256": hashlib.sha256(SPEC_SECRET.encode()).hexdigest()}
    job_id, _ = orch.submit(
        "jobs/examples/mlp-digits.yaml", "name=secrets-resume", "workload=leakprobe:train",
        f"working_dir={probe_dir}", "scaling.num_workers=1", "train.steps=1500", "train.warmup_steps=0",
        "train.eval_every=0", "train.eval_batches=1", "train.report_every=100", "checkpoint.every_steps=100",
        "public_env.PLAIN_SETTING=visible-value", *[f"env.{k}={v}" for k, v in env.items()], wait=False)
    secrets_file = orch.home / "secrets" / f"{job_id}.env"
    root = orch.storage / "jobs" / job_id
    wait_for(lambda: list(root.glob("checkpoints/step-*/MANIFEST.json")), timeout=300, what="a checkpoint")
    assert "CANCELLED" in orch.run("cancel", job_id).stdout
    assert not secrets_file.exists()  # a job that ended leaves no secret on disk, whatever its state

    refused = orch.run("resume", job_id, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "EXPECTED_KEY_SHA256, WANDB_API_KEY" in refused.stderr and f"orch resume {job_id}" in refused.stderr
    assert SPEC_SECRET not in refused.stderr and orch.status(job_id)["state"] == "CANCELLED"

    orch.run("resume", job_id, "--wait", timeout=600, extra_env=env)  # the probe fails unless the value arrived
    status = orch.status(job_id)
    assert status["state"] == "SUCCEEDED" and status["attempts"] == 2 and status["metrics"]["step"] == 1500
    assert not secrets_file.exists()
