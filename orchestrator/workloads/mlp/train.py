"""Per-worker MLP training loop on the digits data, run by the orchestrator on every Ray Train worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from orchestrator.workloads.dist import mean_across_ranks
from orchestrator.workloads.mlp.config import MLPDataConfig, MLPModelConfig
from orchestrator.workloads.mlp.data import DigitsDataset
from orchestrator.workloads.mlp.model import MLP

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from orchestrator.runtime.worker import WorkerContext


@torch.no_grad()
def evaluate(
    ctx: WorkerContext, engine: DeepSpeedEngine, dataset: DigitsDataset
) -> dict[str, float]:
    """Loss and accuracy over the WHOLE validation split (360 digits by default), so the reported accuracy is
    exactly what `orch predict` measures on the saved model. Every rank evaluates the same batches: under
    ZeRO-3 each forward gathers parameters collectively, so all ranks must run the same number of them."""
    engine.eval()
    features, labels = dataset.features["val"], dataset.labels["val"]
    batch = ctx.spec.deepspeed.micro_batch_size
    loss_sum = correct = 0.0
    for start in range(0, len(labels), batch):
        x, y = features[start:start + batch].to(ctx.device, ctx.dtype), labels[start:start + batch].to(ctx.device)
        logits, batch_loss = engine(x, y)
        loss_sum += batch_loss.item() * len(y)
        correct += (logits.argmax(dim=-1) == y).sum().item()
    engine.train()
    n = len(labels)
    return mean_across_ranks({"eval_loss": loss_sum / n, "eval_accuracy": correct / n}, ctx.device)


def train(ctx: WorkerContext) -> dict[str, float]:
    model_cfg = MLPModelConfig(**ctx.spec.model)
    dataset = DigitsDataset(MLPDataConfig(**ctx.spec.data))
    train_cfg, ds_cfg = ctx.spec.train, ctx.spec.deepspeed

    with ctx.model_init():
        model = MLP(model_cfg, l1=train_cfg.l1, l2=train_cfg.l2)
    engine = ctx.build_engine(model)
    start_step = ctx.restore(engine)

    accum = ds_cfg.gradient_accumulation_steps
    loss, evals, evaluated_at = float("nan"), {}, None
    for step in range(start_step + 1, train_cfg.steps + 1):
        lr = engine.get_lr()[0]  # read before engine.step() advances the schedule: the lr this step uses
        loss = 0.0
        for micro in range(accum):
            generator = ctx.generator(step, micro)
            x, y = dataset.batch(generator, ds_cfg.micro_batch_size)
            if train_cfg.input_noise > 0:
                # Drawn from the batch's generator, so a resumed run adds exactly the same noise.
                x = x + train_cfg.input_noise * torch.randn(x.shape, generator=generator)
            _, micro_loss = engine(x.to(ctx.device, ctx.dtype), y.to(ctx.device))
            engine.backward(micro_loss)
            engine.step()  # DeepSpeed only steps the optimizer after the last of the `accum` micro batches
            loss += micro_loss.item() / accum  # this rank's loss; eval is the cross-rank number
        metrics = {"loss": loss, "lr": lr, "samples": accum * ds_cfg.micro_batch_size}
        if ctx.should_eval(step):
            with ctx.evaluation():
                evals, evaluated_at = evaluate(ctx, engine, dataset), step
            metrics |= evals
        ctx.after_step(engine, step, metrics)

    # Report the final model's eval metrics even when the last step fell between eval points, or a resumed
    # run found nothing left to do.
    if evaluated_at != train_cfg.steps:
        evals = evaluate(ctx, engine, dataset)
    # Averaged across ranks like the loss after_step reports, so the final number matches the last report.
    return ctx.finish({**mean_across_ranks({"final_loss": loss}, ctx.device), **evals})
