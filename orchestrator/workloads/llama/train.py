"""Per-worker Llama pretraining, run by the orchestrator on every Ray Train worker.

The loop is the one the gpt workload uses (workloads/lm_loop.py); the data is the gpt workload's data section,
read through the shared LM data interface (`open_lm_data`): a token file or the corpus as random windows, a
prepared dataset streamed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.workloads.gpt.config import GPTDataConfig
from orchestrator.workloads.llama.config import LlamaModelConfig
from orchestrator.workloads.llama.model import LlamaLM
from orchestrator.workloads.lm_data import open_lm_data
from orchestrator.workloads.lm_loop import train_lm

if TYPE_CHECKING:
    from orchestrator.runtime.worker import WorkerContext


def train(ctx: WorkerContext) -> dict[str, float]:
    model_cfg = LlamaModelConfig(**ctx.spec.model)
    train_cfg = ctx.spec.train
    data = open_lm_data(GPTDataConfig(**ctx.spec.data), model_cfg.seq_len, model_cfg.vocab_size, ctx)
    with ctx.model_init():
        model = LlamaLM(model_cfg, activation_checkpointing=ctx.spec.deepspeed.activation_checkpointing,
                        input_noise=train_cfg.input_noise, l1=train_cfg.l1, l2=train_cfg.l2)
    return train_lm(ctx, model, data, model_cfg.seq_len)
