"""Storage faults during training: a passing outage is retried through, a lasting one fails the job loudly,
and no partial checkpoint is ever committed."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import ray_jobs, wait_for
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

RUN = ("train.steps=100", "train.eval_every=0", "checkpoint.every_steps=10", "checkpoint.keep_latest=0")


def _committed(s3, bucket: str, prefix: str) -> list[int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return sorted(int(k.split("/step-")[1][:6]) for k in keys if k.endswith("/MANIFEST.json"))


@pytest.fixture
def proxied_s3(s3_server, request):
    bucket = f"faults-{request.node.name[-20:].lower().replace('_', '-')}"
    s3_server.make_bucket(bucket)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy, bucket, {**s3_server.env, "AWS_ENDPOINT_URL": proxy.url, "ORCH_STORAGE_RETRIES": "6"}


def _logged_step(orch, job_id: str) -> int:
    """Rank 0's newest `orch: step N/M` line in Ray's log of the job (Ray's logs, not storage: readable while
    storage is down)."""
    steps = re.findall(r"orch: step (\d+)/", ray_jobs(orch.env["ORCH_RAY_ADDRESS"]).get_job_logs(job_id))
    return int(steps[-1]) if steps else 0


def _faulted_uploads(proxy: FaultProxy, bucket: str) -> set[str]:
    """Keys of checkpoint objects whose upload requests the proxy answered with an error."""
    return {urlsplit(path).path.split(f"/{bucket}/", 1)[-1] for method, path in list(proxy.faulted)
            if method in ("PUT", "POST") and "/checkpoints/step-" in path}


def test_passing_outage_is_retried_and_training_continues(orch, s3_server, proxied_s3):
    proxy, bucket, env = proxied_s3
    env = {**env, "ORCH_STORAGE_RETRIES": "8"}  # backoff spans ~25 s or more: longer than the outage
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *RUN, "train.report_every=1",
                            f"storage=s3://{bucket}/r", wait=False, extra_env=env)
    prefix = f"r/jobs/{job_id}/"
    s3 = s3_server.client()
    wait_for(lambda: _committed(s3, bucket, prefix), timeout=300, what="first committed checkpoint")
    at_start = wait_for(lambda: _logged_step(orch, job_id), timeout=60, what="a logged step")
    proxy.mode = "error"  # every request answers 503
    try:
        # Training goes on while storage is down: steps advance during the outage, and the outage lasts until it
        # has hit a checkpoint upload (every 10 steps), still well within the uploads' retry budget.
        during = wait_for(lambda: (step := _logged_step(orch, job_id)) >= at_start + 2 and step, timeout=30,
                          what="steps during the outage", poll_s=0.2)
        wait_for(lambda: _faulted_uploads(proxy, bucket), timeout=60, what="a checkpoint upload during the outage",
                 poll_s=0.2)
    finally:
        proxy.mode = "ok"
    assert during >= at_start + 2
    wait_for(lambda: json.loads(orch.run("status", job_id, "--json", extra_env=env).stdout)["state"]
             in ("SUCCEEDED", "FAILED"), timeout=400, what="job end")
    status = json.loads(orch.run("status", job_id, "--json", extra_env=env).stdout)
    assert status["state"] == "SUCCEEDED", status["message"]
    # The outage hit checkpoint uploads, and each of those uploads was retried until its object was stored.
    uploads = _faulted_uploads(proxy, bucket)
    assert uploads, proxy.faulted[:20]
    stored = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
              for o in page.get("Contents", [])}
    assert uploads <= stored, sorted(uploads - stored)
    assert _committed(s3, bucket, prefix)[-1] == 100
    verify = orch.run("verify", job_id, extra_env=env)  # every committed checkpoint re-hashes cleanly
    assert "BAD" not in verify.stdout


def test_lasting_outage_fails_the_job_with_a_storage_message_and_commits_nothing_partial(
        orch, s3_server, proxied_s3):
    proxy, bucket, env = proxied_s3
    env = {**env, "ORCH_STORAGE_RETRIES": "1"}
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *RUN, "failure.max_restarts=0",
                            f"storage=s3://{bucket}/r", wait=False, extra_env=env)
    prefix = f"r/jobs/{job_id}/"
    s3 = s3_server.client()
    wait_for(lambda: _committed(s3, bucket, prefix), timeout=300, what="first committed checkpoint")
    proxy.mode = "error"
    committed_before = _committed(s3, bucket, prefix)
    wait_for(lambda: json.loads(orch.run("status", job_id, "--json", extra_env=env).stdout)["state"]
             in ("SUCCEEDED", "FAILED"), timeout=400, what="job end")
    proxy.mode = "ok"
    status = json.loads(orch.run("status", job_id, "--json", extra_env=env).stdout)
    assert status["state"] == "FAILED"
    assert "storage" in status["message"].lower() or "upload" in status["message"].lower(), status["message"]
    # Every manifest that exists lists files that are all there (nothing half-committed).
    assert _committed(s3, bucket, prefix)[:len(committed_before)] == committed_before
    verify = orch.run("verify", job_id, extra_env=env)
    assert "BAD" not in verify.stdout
