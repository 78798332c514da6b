"""The billion-parameter path (bench/bench_billion.py) at ~38M parameters, where model states, not the process
runtime, decide memory: ZeRO-3 bf16 with buffers sized from the model, full checkpoints (fp32 master
weights, Adam moments) committed to a disk-backed S3 server, a worker SIGKILLed after a commit resumes (its
checkpoint read through memory maps) and trains the same losses again, the export streams into a Hugging Face
directory that reproduces the job's eval loss, and `orch estimate` predicts each worker's peak RSS within 15%."""

from __future__ import annotations

import json
import os
import signal

import pytest

from orchestrator.core import checkpoints
from orchestrator.core.estimate import estimate
from orchestrator.core.run import read_metrics, read_spec
from orchestrator.core.spec import load_spec_file
from orchestrator.core.zero_sizing import model_sized_zero
from orchestrator.storage import open_store
from tests.control.hf_fresh import load_in_fresh_process
from tests.disk_s3 import CREDENTIALS
from tests.e2e.conftest import REPO, Orch, wait_for
from tests.gpt_eval import gpt_eval_batches

pytestmark = [pytest.mark.e2e, pytest.mark.e2e_timeout(900)]

GPT = "jobs/examples/gpt-zero3.yaml"
STEPS = 16
# ~38M parameters in bf16 (the 1B example's shape, scaled down): micro batch 1 with activation
# checkpointing, so the model states (16 bytes/param over 2 workers) are most of each worker's memory.
MID = ("model.d_model=512", "model.n_layer=12", "model.n_head=8", "model.seq_len=128",
       "deepspeed.precision=bf16", "deepspeed.micro_batch_size=1", "deepspeed.activation_checkpointing=true",
       f"train.steps={STEPS}", "train.warmup_steps=2", "train.lr=1e-3", "train.report_every=1", "train.eval_every=0",
       "train.eval_batches=2", "checkpoint.every_steps=4", "checkpoint.keep_latest=1", "checkpoint.at_end=true",
       "failure.max_restarts=1", "storage=s3://orch/zero3-mid", "name=mid-zero3")


def _losses(store) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(store) if "loss" in r and not r.get("final")}


def test_zero3_bf16_checkpoints_to_disk_s3_resumes_exports_and_fits_its_estimate(orch: Orch, disk_s3, tmp_path,
                                                                                  monkeypatch):
    url, _, _ = disk_s3
    env = {"AWS_ENDPOINT_URL": url, **CREDENTIALS}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = load_spec_file(REPO / GPT, list(MID))
    est = estimate(spec)
    assert 30_000_000 < est.params < 50_000_000
    # The run uses model-sized buffers, not DeepSpeed's 5e8-element defaults.
    assert model_sized_zero(spec, 2)["reduce_bucket_size"] < 20_000_000

    job_id, _ = orch.submit(GPT, *MID, wait=False, extra_env=env)
    store = open_store(f"s3://orch/zero3-mid/jobs/{job_id}")
    first = wait_for(lambda: [c.step for c in checkpoints.list_checkpoints(store) if c.committed], timeout=600,
                     what="a committed checkpoint", poll_s=0.2)[0]
    before_kill = _losses(store)
    os.kill(json.loads(store.get_bytes("workers/rank-00001.json"))["pid"], signal.SIGKILL)
    assert max(before_kill) < STEPS, "the job finished before the kill: lengthen it"
    status_of = lambda: json.loads(orch.run("status", job_id, "--json", extra_env=env).stdout)  # noqa: E731
    wait_for(lambda: status_of()["state"] in ("SUCCEEDED", "FAILED"), timeout=600, what="job end")
    status = status_of()
    assert status["state"] == "SUCCEEDED" and status["attempts"] == 2, status["message"]

    # The full checkpoint (every rank's fp32 master weights and both Adam moments; ZeRO-3 keeps no separate bf16
    # copy) is on the server's disk.
    final_step = max(c.step for c in checkpoints.list_checkpoints(store) if c.committed)
    stored = sum(o.size for o in store.list(f"checkpoints/{checkpoints.step_tag(final_step)}/"))
    assert stored > 12 * est.params  # 4 + 8 bytes per parameter, and the model-state files
    second = sorted(o.key for o in store.list("attempts/"))[1]
    restored = json.loads(store.get_bytes(second))["restored_step"]
    assert restored >= first
    after = _losses(store)
    assert sorted(after) == list(range(1, STEPS + 1))  # the curve continues, no step twice
    redone = [s for s in before_kill if s > restored]
    assert redone, (before_kill, restored)  # steps the killed attempt had logged were trained again ...
    assert all(abs(before_kill[s] - after[s]) <= 1e-5 for s in redone), (before_kill, after)  # ... identically
    assert after[STEPS] < after[1]

    ranks = [json.loads(store.get_bytes(f"workers/rank-{r:05d}.json")) for r in (0, 1)]
    print(json.dumps({"estimate": est.as_dict(), "ranks": ranks}))  # the figures, for the record (-s)
    for rank in ranks:  # the resumed attempt's workers: their restore mapped the checkpoint files
        measured = rank["memory"]
        # The model states at the end of the first update (all sub groups stepped) ...
        assert measured["model_states"] == pytest.approx(est.model_states, rel=0.15), (measured, est.as_dict())
        assert measured["master"] == pytest.approx(est.component("master"), rel=0.05)  # every sub group's fp32
        # ... and the whole process's peak over training, against the estimate's total.
        assert rank["peak_rss_training"] == pytest.approx(est.total, rel=0.15), (rank, est.as_dict())

    out = tmp_path / "hf"
    orch.run("export", job_id, "--format", "hf", "--out", str(out), "--max-shard-size", "50MB", extra_env=env)
    assert (out / "model.safetensors.index.json").is_file()
    ids, targets = gpt_eval_batches(read_spec(store), STEPS, 2)
    got = load_in_fresh_process([{"dir": str(out), "ids": ids, "targets": targets, "logits": False}],
                                tmp_path / "fresh")[str(out)]
    final = [r for r in read_metrics(store) if r.get("final")][-1]
    # The job evaluated in bf16; the export is the fp32 master those weights were rounded from.
    assert got["target_loss"] == pytest.approx(final["eval_loss"], abs=0.03)
