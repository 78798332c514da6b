"""`orch export` consolidates ZeRO-3 shards into one fp32 state dict that reproduces the job's reported eval loss."""

from __future__ import annotations

import pytest
import torch
import yaml

from orchestrator.runtime.worker import data_generator
from orchestrator.workloads.gpt.config import GPTDataConfig, GPTModelConfig
from orchestrator.workloads.gpt.data import TokenDataset, load_tokens
from orchestrator.workloads.gpt.model import GPT
from tests.e2e.conftest import metrics_rows

pytestmark = pytest.mark.e2e


def test_export_of_zero3_job_reproduces_reported_eval_loss(orch, tmp_path):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", "train.steps=30", "train.eval_every=30",
                            "checkpoint.every_steps=0", "name=export")
    orch.run("export", job_id, "--out", str(tmp_path / "model.pt"))
    orch.run("export", job_id, "--out", str(tmp_path / "model.safetensors"), "--safetensors")
    from safetensors.torch import load_file

    state = torch.load(tmp_path / "model.pt", weights_only=True)
    as_safetensors = load_file(str(tmp_path / "model.safetensors"))
    assert state.keys() == as_safetensors.keys()
    assert all(torch.equal(state[k], as_safetensors[k]) for k in state)
    status = orch.status(job_id)
    final = [r for r in metrics_rows(orch.storage / "jobs" / job_id) if r.get("final")][-1]
    spec = yaml.safe_load((orch.storage / "jobs" / job_id / "spec.yaml").read_text())
    model_cfg, data_cfg = GPTModelConfig(**spec["model"]), GPTDataConfig(**spec["data"])
    model = GPT(model_cfg)
    model.load_state_dict(state)
    model.eval()
    dataset = TokenDataset(load_tokens(data_cfg, model_cfg.vocab_size, read_bytes=None), data_cfg.val_fraction)
    # Replay the job's own evaluation: each of the 2 ranks' eval batches at the last step, averaged.
    losses = []
    with torch.no_grad():
        for rank in (0, 1):
            generator = data_generator(spec["train"]["seed"], 30, 0, rank, "val")
            for _ in range(spec["train"]["eval_batches"]):
                x, y = dataset.batch(generator, spec["deepspeed"]["micro_batch_size"], model_cfg.seq_len, "val")
                losses.append(model(x, y)[1].item())
    assert status["state"] == "SUCCEEDED"
    assert sum(losses) / len(losses) == pytest.approx(final["eval_loss"], abs=1e-5)
