"""Training streams a prepared dataset from S3: 2 workers under ZeRO-3, a worker killed after a committed
checkpoint, and the resumed run's losses are the uninterrupted run's (same sequences, same order)."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from orchestrator.storage import open_store
from orchestrator.workloads.gpt.data import CORPUS_PATH
from tests.e2e.conftest import attempts, committed_steps, metrics_rows, wait_for
from tests.s3server import S3Server
from tests.workloads.prepared_data import write_prepared

pytestmark = [pytest.mark.e2e, pytest.mark.e2e_timeout(900)]

SHARD = 10_000  # bytes of the corpus per shard: 3 train shards = 468 sequences of 64, about 2 epochs in 60 steps
RUN = ("train.steps=60", "train.eval_every=0", "train.report_every=2", "checkpoint.every_steps=10",
       "checkpoint.keep_latest=0", "failure.max_restarts=1")


def _losses(root) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics_rows(root) if not r.get("final") and "loss" in r}


def test_streamed_dataset_resumes_at_the_same_sequence(orch, s3_env: str, s3_server: S3Server):
    corpus = np.frombuffer(CORPUS_PATH.read_bytes()[:4 * SHARD], dtype=np.uint8)
    dataset = s3_env + "/corpus"
    write_prepared(open_store(dataset), [("train", corpus[i * SHARD:(i + 1) * SHARD]) for i in range(3)]
                   + [("val", corpus[3 * SHARD:])], vocab_size=256)
    sets = (*RUN, f"data.path={dataset}")
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *sets, wait=False, extra_env=s3_server.env)
    reference_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", *sets, wait=False, extra_env=s3_server.env)
    root = orch.storage / "jobs" / job_id
    wait_for(lambda: (root / "checkpoints").exists() and [s for s in committed_steps(root) if s >= 10],
             timeout=300, what="a committed checkpoint")
    os.kill(json.loads((root / "workers/rank-00001.json").read_text())["pid"], signal.SIGKILL)

    for jid in (job_id, reference_id):
        wait_for(lambda jid=jid: orch.status(jid)["state"] in ("SUCCEEDED", "FAILED"), timeout=600, what="job end")
    for jid in (job_id, reference_id):
        assert orch.status(jid)["state"] == "SUCCEEDED", orch.status(jid)["message"]
    restored = attempts(root)[1]["restored_step"]
    assert restored >= 10
    killed, reference = _losses(root), _losses(orch.storage / "jobs" / reference_id)
    assert killed.keys() == reference.keys() and max(killed) == 60
    assert [s for s in killed if s > restored]
    assert all(abs(killed[s] - reference[s]) <= 1e-4 for s in killed), (killed, reference)
    epochs = {r["step"]: r["epoch"] for r in metrics_rows(root) if "epoch" in r}
    assert epochs[60] == pytest.approx(60 * 16 / 468, abs=1e-5)  # rolled over into the third epoch
    final = [r for r in metrics_rows(root) if r.get("final")][-1]
    assert np.isfinite(final["eval_loss"])  # the final evaluation read the val shard
