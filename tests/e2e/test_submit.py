"""Issue: a spec goes in through `orch submit`, real Ray Train + DeepSpeed workers train, storage holds the result."""

from __future__ import annotations

import json
import time

import boto3
import pytest

from orchestrator.control.cluster_address import cluster_usage
from tests.e2e.conftest import ray_jobs

pytestmark = pytest.mark.e2e


def _job_files(orch, job_id: str) -> set[str]:
    root = orch.storage / "jobs" / job_id
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_gpt_zero3_example_trains_to_success_and_stores_everything(orch):
    job_id, proc = orch.submit("jobs/examples/gpt-zero3.yaml")
    assert "SUCCEEDED" in proc.stderr
    status = orch.status(job_id)
    assert status["state"] == "SUCCEEDED"
    assert status["attempts"] == 1
    assert status["metrics"]["step"] == 150

    root = orch.storage / "jobs" / job_id
    rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and not r.get("final")]
    assert rows[0]["step"] == 1
    # Byte-level LM starts near ln(256) = 5.5; the example must learn clearly.
    assert losses[0] > 4.5 and losses[-1] < losses[0] - 1.5, losses

    result = json.loads((root / "result.json").read_text())
    assert result["status"] == "SUCCEEDED" and result["checkpoints"] == [100, 150]
    files = _job_files(orch, job_id)
    for rank in (0, 1):
        assert f"checkpoints/step-000150/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files
        assert f"checkpoints/step-000150/zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in files
    assert {"spec.yaml", "metrics.jsonl", "result.json", "checkpoints/step-000150/MANIFEST.json"} <= files
    assert "checkpoints/step-000050/MANIFEST.json" not in files  # keep_latest: 2

    # ZeRO-3: each of the 2 ranks holds about half of the parameters.
    shards = [json.loads((root / f"workers/rank-{r:05d}.json").read_text()) for r in (0, 1)]
    total = shards[0]["params_total"]
    assert sum(s["params_local"] for s in shards) >= total
    for shard in shards:
        assert 0.45 * total <= shard["params_local"] <= 0.55 * total, shard

    # The Ray Jobs API knows it too (so `ray job list` shows it).
    states = {j.submission_id: j.status.value for j in ray_jobs(orch.env["ORCH_RAY_ADDRESS"]).list_jobs()}
    assert states[job_id] == "SUCCEEDED"


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_stages_1_and_2_train(orch, stage):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", f"deepspeed.zero_stage={stage}", "train.steps=30",
                            "train.eval_every=0", "checkpoint.every_steps=0", f"name=gpt-zero{stage}")
    status = orch.status(job_id)
    assert status["state"] == "SUCCEEDED"
    assert status["metrics"]["step"] == 30
    root = orch.storage / "jobs" / job_id
    shards = [json.loads((root / f"workers/rank-{r:05d}.json").read_text()) for r in (0, 1)]
    # Stages 1 and 2 shard optimizer state and gradients but keep whole parameters on every rank.
    assert all(s["params_local"] == s["params_total"] for s in shards)
    assert {f"checkpoints/step-000030/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= \
        _job_files(orch, job_id)


def test_s3_storage_holds_spec_metrics_result_and_both_ranks_shards(orch, s3_server):
    bucket = "orch-e2e-runs"
    s3_server.make_bucket(bucket)
    env = s3_server.env
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", f"storage=s3://{bucket}/runs", "train.steps=20",
                            "checkpoint.every_steps=10", "train.eval_every=10", extra_env=env)
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = {o["Key"] for page in pages for o in page.get("Contents", [])}
    prefix = f"runs/jobs/{job_id}/"
    for name in ("spec.yaml", "metrics.jsonl", "result.json", "checkpoints/step-000020/MANIFEST.json"):
        assert prefix + name in keys
    for step in (10, 20):
        for rank in (0, 1):
            assert f"{prefix}checkpoints/step-{step:06d}/zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in keys
    assert not [k for k in keys if k.endswith("/")]  # no directory markers
    result = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "result.json")["Body"].read())
    assert result["status"] == "SUCCEEDED"
    assert orch.status(job_id)["storage_uri"] == f"s3://{bucket}/runs/jobs/{job_id}"

    # Every manifest hash matches its object; flipping one byte of one shard makes verify fail, naming it.
    assert orch.run("verify", job_id, extra_env=env).stdout.count(": OK") == 2
    victim = f"{prefix}checkpoints/step-000010/zero_pp_rank_1_mp_rank_00_model_states.pt"
    body = bytearray(s3.get_object(Bucket=bucket, Key=victim)["Body"].read())
    body[100] ^= 0x01
    s3.put_object(Bucket=bucket, Key=victim, Body=bytes(body))
    verify = orch.run("verify", job_id, check=False, extra_env=env)
    assert verify.returncode == 1
    bad = [line for line in verify.stdout.splitlines() if "BAD" in line]
    assert len(bad) == 1 and "step 10" in bad[0] and "zero_pp_rank_1_mp_rank_00_model_states.pt" in bad[0]


def test_cancel_running_job_ends_cancelled_and_frees_resources(orch):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", "train.steps=100000", "checkpoint.every_steps=0",
                            "checkpoint.at_end=false", wait=False)
    url = orch.env["ORCH_RAY_ADDRESS"]
    deadline = time.monotonic() + 180
    while orch.status(job_id)["metrics"].get("step", 0) < 1:  # workers hold their CPUs and are training
        assert time.monotonic() < deadline, orch.status(job_id)
        time.sleep(1)
    assert cluster_usage(url)["CPU"][0] == 2.0
    started = time.monotonic()
    proc = orch.run("cancel", job_id)
    assert "CANCELLED" in proc.stdout
    assert time.monotonic() - started < 30
    assert orch.status(job_id)["state"] == "CANCELLED"
    deadline = time.monotonic() + 30
    while cluster_usage(url)["CPU"][0] != 0.0:
        assert time.monotonic() < deadline, "Ray resources were not released after cancel"
        time.sleep(0.5)
