"""The batches a gpt job evaluated at a step, drawn exactly as each of its ranks drew them (tests and bench)."""

from __future__ import annotations

from typing import Any

from orchestrator.runtime.worker import data_generator
from orchestrator.workloads.gpt.config import GPTDataConfig, GPTModelConfig
from orchestrator.workloads.gpt.data import TokenDataset, load_tokens


def gpt_eval_batches(spec: dict[str, Any], step: int, world_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """(inputs, next-token targets) of every rank's `train.eval_batches` validation batches at `step`."""
    model_cfg, data_cfg = GPTModelConfig(**spec["model"]), GPTDataConfig(**spec["data"])
    dataset = TokenDataset(load_tokens(data_cfg, model_cfg.vocab_size, read_bytes=None), data_cfg.val_fraction)
    xs, ys = [], []
    for rank in range(world_size):
        generator = data_generator(spec["train"]["seed"], step, 0, rank, "val")
        for _ in range(spec["train"]["eval_batches"]):
            x, y = dataset.batch(generator, spec["deepspeed"]["micro_batch_size"], model_cfg.seq_len, "val")
            xs += x.tolist()
            ys += y.tolist()
    return xs, ys
