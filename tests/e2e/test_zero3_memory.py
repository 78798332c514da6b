"""ZeRO-3 at a size where model states, not the process runtime, decide memory: the job runs with buffers
sized from the model, and `orch estimate` predicts each worker's measured peak RSS within 15%."""

from __future__ import annotations

import json

import pytest

from orchestrator.core.estimate import estimate
from orchestrator.core.spec import load_spec_file
from orchestrator.core.zero_sizing import model_sized_zero
from tests.e2e.conftest import REPO, Orch, metrics_rows

pytestmark = pytest.mark.e2e

GPT = "jobs/examples/gpt-zero3.yaml"
# ~38M parameters in bf16 (the 1B example's shape, scaled down): micro batch 1 with activation
# checkpointing, so the model states (16 bytes/param over 2 workers) are most of each worker's memory.
MID = ("model.d_model=512", "model.n_layer=12", "model.n_head=8", "model.seq_len=128",
       "deepspeed.precision=bf16", "deepspeed.micro_batch_size=1", "deepspeed.activation_checkpointing=true",
       "train.steps=6", "train.warmup_steps=2", "train.lr=1e-3", "train.report_every=1", "train.eval_every=0",
       "train.eval_batches=1", "checkpoint.every_steps=0", "checkpoint.at_end=false", "name=mid-zero3")


def test_zero3_bf16_peak_rss_matches_estimate(orch: Orch):
    spec = load_spec_file(REPO / GPT, list(MID))
    est = estimate(spec)
    assert 30_000_000 < est.params < 50_000_000
    job_id, _ = orch.submit(GPT, *MID, timeout=900)
    root = orch.storage / "jobs" / job_id
    ranks = [json.loads(p.read_text()) for p in sorted((root / "workers").glob("rank-*.json"))]
    print(json.dumps({"estimate": est.as_dict(), "ranks": ranks}))  # the figures, for the record (-s)
    assert len(ranks) == 2
    for rank in ranks:
        measured = rank["memory"]
        # The model states at the end of the first update (all sub groups stepped) ...
        assert measured["model_states"] == pytest.approx(est.model_states, rel=0.15), (measured, est.as_dict())
        assert measured["master"] == pytest.approx(est.component("master"), rel=0.05)  # every sub group's fp32
        # ... and the whole process's peak over training, against the estimate's total.
        assert rank["peak_rss_training"] == pytest.approx(est.total, rel=0.15), (rank, est.as_dict())
    rows = [r for r in metrics_rows(root) if "loss" in r and not r.get("final")]
    assert len(rows) == 6 and rows[-1]["loss"] < rows[0]["loss"]
    # The run used the model-sized buffers, not DeepSpeed's 5e8-element defaults.
    assert model_sized_zero(spec, 2)["reduce_bucket_size"] < 20_000_000
