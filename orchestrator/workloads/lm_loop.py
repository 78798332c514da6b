"""The causal-LM training loop the gpt and llama workloads share, run on every Ray Train worker.

A workload builds its model (inside ctx.model_init(), so ZeRO-3 partitions it as it is built) and its data
(`open_lm_data`); this loop does the rest: engine, restore, micro batches with gradient accumulation, eval,
reports, checkpoints (through ctx.after_step) and the final verdict. Any model whose forward is
`(input_ids, targets) -> (logits, loss)` fits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from orchestrator.workloads.dist import mean_across_ranks
from orchestrator.workloads.lm_data import LMData

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from orchestrator.runtime.worker import WorkerContext


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


def train_lm(ctx: WorkerContext, model: torch.nn.Module, data: LMData, seq_len: int) -> dict[str, float]:
    """Train `model` on `data` for train.steps (from the restored step on) and return the final metrics."""
    train_cfg, ds_cfg = ctx.spec.train, ctx.spec.deepspeed
    engine = ctx.build_engine(model)
    start_step = ctx.restore(engine)

    accum = ds_cfg.gradient_accumulation_steps
    loss, evals, evaluated_at = float("nan"), {}, None
    for step in range(start_step + 1, train_cfg.steps + 1):
        lr = engine.get_lr()[0]  # read before engine.step() advances the schedule: the lr this step uses
        loss = 0.0
        for micro in range(accum):
            x, y = data.batch(step, micro, ds_cfg.micro_batch_size)
            _, micro_loss = engine(x.to(ctx.device), y.to(ctx.device))
            engine.backward(micro_loss)
            engine.step()  # DeepSpeed only steps the optimizer after the last of the `accum` micro batches
            loss += micro_loss.item() / accum  # this rank's loss, as nanoGPT logs it; eval is cross-rank
        metrics = {"loss": loss, "lr": lr, "tokens": accum * ds_cfg.micro_batch_size * seq_len}
        metrics |= data.metrics(step)
        if ctx.should_eval(step):
            with ctx.evaluation():
                evals, evaluated_at = evaluate(ctx, engine, data, step), step
            metrics |= evals
        ctx.after_step(engine, step, metrics)

    # Report the final model's eval loss even when the last step fell between eval points, or a resumed run
    # found nothing left to do.
    if evaluated_at != train_cfg.steps:
        evals = evaluate(ctx, engine, data, train_cfg.steps)
    # Averaged across ranks like the loss after_step reports, so the final number matches the last report.
    return ctx.finish({**mean_across_ranks({"final_loss": loss}, ctx.device), **evals})
