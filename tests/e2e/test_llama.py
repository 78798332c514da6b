"""The llama workload through the CLI: a tiny LlamaForCausalLM under ZeRO-3 bf16 on 2 workers learns, evaluates,
commits checkpoints whose consolidated weights load into transformers as they are (and export as a Hugging Face
directory), and its workers' peak memory is what `orch estimate` predicted."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from orchestrator.core.estimate import estimate
from orchestrator.core.spec import load_spec_file
from orchestrator.runtime.worker import data_generator
from orchestrator.workloads.gpt.config import GPTDataConfig
from orchestrator.workloads.gpt.data import TokenDataset, load_tokens
from orchestrator.workloads.llama.config import LlamaModelConfig, hf_config_kwargs
from tests.control.hf_fresh import load_in_fresh_process
from tests.e2e.conftest import REPO, committed_steps, metrics_rows

pytestmark = [pytest.mark.e2e, pytest.mark.e2e_timeout(600)]

LLAMA = "jobs/examples/llama-zero3.yaml"
SETTINGS = ("train.steps=30", "train.warmup_steps=3", "train.eval_every=15", "train.report_every=5",
            "checkpoint.every_steps=15", "name=llama-e2e")


def test_llama_zero3_trains_checkpoints_and_fits_its_estimate(orch, tmp_path):
    spec = load_spec_file(REPO / LLAMA, list(SETTINGS))
    assert spec.deepspeed.zero_stage == 3 and spec.deepspeed.precision == "bf16" and spec.scaling.num_workers == 2
    job_id, _ = orch.submit(LLAMA, *SETTINGS)
    root = orch.storage / "jobs" / job_id
    assert orch.status(job_id)["state"] == "SUCCEEDED"

    rows = [r for r in metrics_rows(root) if not r.get("final")]
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[0] == pytest.approx(math.log(256), abs=0.1)  # Llama's initialisation: uniform over the bytes
    assert losses[-1] < losses[0] - 1.0
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    assert sorted(evals) == [15, 30] and evals[30] < math.log(256) - 1.0
    assert committed_steps(root) == [15, 30]

    est = estimate(spec)
    ranks = [json.loads(p.read_text()) for p in sorted((root / "workers").glob("rank-*.json"))]
    print(json.dumps({"estimate_total": est.total, "peak_rss": [r["peak_rss_training"] for r in ranks]}))
    assert len(ranks) == 2
    for rank in ranks:
        assert rank["params_local"] < rank["params_total"] == est.params  # ZeRO-3 sharded the real model
        assert rank["peak_rss_training"] == pytest.approx(est.total, rel=0.15), (rank, est.as_dict())

    # The consolidated checkpoint is a LlamaForCausalLM state dict: it loads strictly and replays the job's eval.
    orch.run("export", job_id, "--out", str(tmp_path / "model.pt"))
    from transformers import LlamaConfig, LlamaForCausalLM

    stored = yaml.safe_load((root / "spec.yaml").read_text())
    model_cfg, data_cfg = LlamaModelConfig(**stored["model"]), GPTDataConfig(**stored["data"])
    model = LlamaForCausalLM(LlamaConfig(**hf_config_kwargs(model_cfg)))
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    model.eval()
    dataset = TokenDataset(load_tokens(data_cfg, model_cfg.vocab_size, read_bytes=None), data_cfg.val_fraction)
    xs, ys = [], []
    for rank in (0, 1):
        generator = data_generator(stored["train"]["seed"], 30, 0, rank, "val")
        for _ in range(stored["train"]["eval_batches"]):
            x, y = dataset.batch(generator, stored["deepspeed"]["micro_batch_size"], model_cfg.seq_len, "val")
            xs.append(x)
            ys.append(y)
    with torch.no_grad():
        replayed = [F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten()).item()
                    for x, y in zip(xs, ys, strict=True)]
    # The job evaluated in bf16; the export holds the fp32 master weights.
    assert sum(replayed) / len(replayed) == pytest.approx(evals[30], abs=0.03)

    # And as a Hugging Face directory, loaded by transformers alone in a fresh process.
    hf_dir = tmp_path / "hf"
    orch.run("export", job_id, "--format", "hf", "--out", str(hf_dir))
    batch = {"dir": str(hf_dir), "ids": torch.cat(xs).tolist(), "targets": torch.cat(ys).tolist(), "logits": False}
    got = load_in_fresh_process([batch], tmp_path / "fresh")[str(hf_dir)]
    assert got["class"] == "LlamaForCausalLM"
    assert got["target_loss"] == pytest.approx(sum(replayed) / len(replayed), abs=1e-4)
