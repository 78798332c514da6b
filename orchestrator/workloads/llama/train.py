"""Per-worker Llama pretraining loop, run by the orchestrator on every Ray Train worker.

The loop is the gpt workload's (LR schedule, eval, checkpoints and resume come from the WorkerContext); the
data is the gpt workload's data section, read through the shared LM data interface (`open_lm_data`): a token
file or the corpus as random windows, a prepared dataset streamed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from orchestrator.workloads.dist import mean_across_ranks
from orchestrator.workloads.gpt.config import GPTDataConfig
from orchestrator.workloads.llama.config import LlamaModelConfig
from orchestrator.workloads.llama.model import LlamaLM
from orchestrator.workloads.lm_data import LMData, open_lm_data

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from orchestrator.runtime.worker import WorkerContext


def data_for(ctx: WorkerContext, model_cfg: LlamaModelConfig) -> LMData:
    """The training and validation batches: the gpt workload's data section, through the shared interface."""
    return open_lm_data(GPTDataConfig(**ctx.spec.data), model_cfg.seq_len, model_cfg.vocab_size, ctx)


@torch.no_grad()
def evaluate(ctx: WorkerContext, engine: DeepSpeedEngine, data: LMData, step: int) -> dict[str, float]:
    """Mean val loss over eval_batches batches per rank, averaged across ranks."""
    engine.eval()
    total = 0.0
    # Same number of forward passes on every rank: under ZeRO-3 each one gathers parameters collectively.
    for i in range(ctx.spec.train.eval_batches):
        x, y = data.batch(step, i, ctx.spec.deepspeed.micro_batch_size, "val")
        _, loss = engine(x.to(ctx.device), y.to(ctx.device))
        total += loss.item()
    engine.train()
    return mean_across_ranks({"eval_loss": total / ctx.spec.train.eval_batches}, ctx.device)


def train(ctx: WorkerContext) -> dict[str, float]:
    model_cfg = LlamaModelConfig(**ctx.spec.model)
    train_cfg, ds_cfg = ctx.spec.train, ctx.spec.deepspeed
    data = data_for(ctx, model_cfg)

    with ctx.model_init():
        model = LlamaLM(model_cfg, activation_checkpointing=ds_cfg.activation_checkpointing,
                        input_noise=train_cfg.input_noise, l1=train_cfg.l1, l2=train_cfg.l2)
    engine = ctx.build_engine(model)
    start_step = ctx.restore(engine)

    accum, seq_len = ds_cfg.gradient_accumulation_steps, model_cfg.seq_len
    loss, evals, evaluated_at = float("nan"), {}, None
    for step in range(start_step + 1, train_cfg.steps + 1):
        lr = engine.get_lr()[0]  # read before engine.step() advances the schedule: the lr this step uses
        loss = 0.0
        for micro in range(accum):
            x, y = data.batch(step, micro, ds_cfg.micro_batch_size)
            _, micro_loss = engine(x.to(ctx.device), y.to(ctx.device))
            engine.backward(micro_loss)
            engine.step()  # DeepSpeed only steps the optimizer after the last of the `accum` micro batches
            loss += micro_loss.item() / accum
        metrics = {"loss": loss, "lr": lr, "tokens": accum * ds_cfg.micro_batch_size * seq_len}
        metrics |= data.metrics(step)
        if ctx.should_eval(step):
            evals, evaluated_at = evaluate(ctx, engine, data, step), step
            metrics |= evals
        ctx.after_step(engine, step, metrics)

    # The final model's eval loss, even when the last step fell between eval points or a resumed run found
    # nothing left to do.
    if evaluated_at != train_cfg.steps:
        evals = evaluate(ctx, engine, data, train_cfg.steps)
    return ctx.finish({**mean_across_ranks({"final_loss": loss}, ctx.device), **evals})
