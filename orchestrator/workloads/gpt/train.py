"""Per-worker GPT pretraining, run by the orchestrator on every Ray Train worker (the loop: workloads/lm_loop.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.workloads.gpt.config import GPTDataConfig, GPTModelConfig
from orchestrator.workloads.gpt.model import GPT
from orchestrator.workloads.lm_data import open_lm_data
from orchestrator.workloads.lm_loop import train_lm

if TYPE_CHECKING:
    from orchestrator.runtime.worker import WorkerContext


def train(ctx: WorkerContext) -> dict[str, float]:
    model_cfg = GPTModelConfig(**ctx.spec.model)
    data = open_lm_data(GPTDataConfig(**ctx.spec.data), model_cfg.seq_len, model_cfg.vocab_size, ctx)
    with ctx.model_init():
        model = GPT(model_cfg, activation_checkpointing=ctx.spec.deepspeed.activation_checkpointing,
                    input_noise=ctx.spec.train.input_noise, l1=ctx.spec.train.l1, l2=ctx.spec.train.l2)
    return train_lm(ctx, model, data, model_cfg.seq_len)
