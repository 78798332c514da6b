"""A user's own workload: a small convolutional classifier on the 8x8 digits images.

The orchestrator imports `digits_cnn.train:train` on every worker (this folder is the job's `working_dir`) and
passes a WorkerContext; everything else here is ordinary PyTorch. The context supplies the ZeRO-aware model
construction, the DeepSpeed engine, restore after a failure, seeded batches and checkpoint/metric reporting.
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 16, dropout: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * channels * 4 * 4, 10)  # 8x8 -> 4x4 after one 2x2 pool

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.conv1(images))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        logits = self.head(self.dropout(x.flatten(1)))
        return logits, F.cross_entropy(logits.float(), labels)


def load_splits(val_fraction: float, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Images scaled to [0, 1] as (N, 1, 8, 8) float32 and labels, split the same way on every worker."""
    images, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(images / 16.0, labels, test_size=val_fraction,
                                                      stratify=labels, random_state=seed)

    def tensors(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8), torch.tensor(y, dtype=torch.int64)

    return {"train": tensors(x_train, y_train), "val": tensors(x_val, y_val)}


@torch.no_grad()
def evaluate(ctx: Any, engine: Any, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Loss and accuracy over the whole validation split, averaged across ranks (each sees the same batches)."""
    engine.eval()
    loss_sum = correct = 0.0
    for start in range(0, len(labels), 64):
        x, y = images[start:start + 64].to(ctx.device, ctx.dtype), labels[start:start + 64].to(ctx.device)
        logits, loss = engine(x, y)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(dim=-1) == y).sum().item()
    engine.train()
    return {"eval_loss": ctx.all_reduce_mean(loss_sum / len(labels)),
            "eval_accuracy": ctx.all_reduce_mean(correct / len(labels))}


def train(ctx: Any) -> dict[str, float]:
    model_cfg, data_cfg = ctx.spec.model, ctx.spec.data  # free-form sections: this workload reads its own keys
    splits = load_splits(float(data_cfg.get("val_fraction", 0.2)), int(data_cfg.get("split_seed", 0)))
    train_images, train_labels = splits["train"]
    micro, accum = ctx.spec.deepspeed.micro_batch_size, ctx.spec.deepspeed.gradient_accumulation_steps

    with ctx.model_init():
        model = DigitsCNN(int(model_cfg.get("channels", 16)), float(model_cfg.get("dropout", 0.1)))
    engine = ctx.build_engine(model)
    start_step = ctx.restore(engine)

    loss, evals = float("nan"), {}
    for step in range(start_step + 1, ctx.spec.train.steps + 1):
        lr, loss = engine.get_lr()[0], 0.0
        for m in range(accum):  # DeepSpeed steps the optimizer after the last of `accum` micro batches
            # Drawn from a seeded generator per (step, micro): a resumed run sees exactly the same batches.
            idx = torch.randint(len(train_labels), (micro,), generator=ctx.generator(step, m))
            _, micro_loss = engine(train_images[idx].to(ctx.device, ctx.dtype), train_labels[idx].to(ctx.device))
            engine.backward(micro_loss)
            engine.step()
            loss += micro_loss.item() / accum
        metrics = {"loss": loss, "lr": lr, "samples": accum * micro}
        if ctx.should_eval(step):
            with ctx.evaluation():  # left out of the training throughput
                evals = evaluate(ctx, engine, *splits["val"])
            metrics |= evals
        ctx.after_step(engine, step, metrics)
    evals = evaluate(ctx, engine, *splits["val"])
    return ctx.finish({"final_loss": ctx.all_reduce_mean(loss), **evals})
