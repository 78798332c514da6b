"""Baselines without orch: the same GPT and batch in a plain PyTorch loop and a plain DeepSpeed script.

    python -m bench.plain_loops torch --steps 200
    python -m bench.plain_loops deepspeed --steps 200 --stage 1

Prints one JSON line: {"tokens_per_s": ...}. One thread, like a 1-CPU Ray Train worker (Ray sets
OMP_NUM_THREADS to the worker's CPUs), so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import torch

from bench.common import GPT_MODEL, MICRO_BATCH
from orchestrator.workloads.gpt.config import GPTDataConfig, GPTModelConfig
from orchestrator.workloads.gpt.data import TokenDataset, load_tokens
from orchestrator.workloads.gpt.model import GPT

# Measured like the orch runs (train.report_every=25, bench.common.steady_rate): tokens/s per 25-step window,
# median of the windows after the first, which holds the warm-up.
WINDOW_STEPS = 25


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["torch", "deepspeed"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--stage", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = GPTModelConfig(**GPT_MODEL)
    dataset = TokenDataset(load_tokens(GPTDataConfig(), cfg.vocab_size, read_bytes=None), 0.1)
    model = GPT(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    if args.mode == "deepspeed":
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(_free_port()), "DS_ACCELERATOR": "cpu"})
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config={
            "train_micro_batch_size_per_gpu": MICRO_BATCH, "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0, "zero_optimization": {"stage": args.stage}, "steps_per_print": 10**9})

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            _, loss = engine(x, y)
            engine.backward(loss)
            engine.step()
    else:
        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    generator = torch.Generator().manual_seed(0)
    rates = []
    window_started = time.perf_counter()
    for i in range(1, args.steps + 1):
        step(*dataset.batch(generator, MICRO_BATCH, cfg.seq_len))
        if i % WINDOW_STEPS == 0:
            now = time.perf_counter()
            rates.append(WINDOW_STEPS * MICRO_BATCH * cfg.seq_len / (now - window_started))
            window_started = now
    print(json.dumps({"tokens_per_s": statistics.median(rates[1:])}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
