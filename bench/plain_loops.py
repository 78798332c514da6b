"""Baselines without orch: the same GPT, batch, optimizer and DeepSpeed config as an `orch submit` of
jobs/examples/gpt-zero3.yaml with bench.common.gpt_sets, in a plain PyTorch loop (1 process) or a plain
DeepSpeed script on N processes (torch.distributed over gloo, started as plain subprocesses with
MASTER_ADDR/MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK set, as a launcher would).

    python -m bench.plain_loops torch --steps 200
    python -m bench.plain_loops deepspeed --steps 200 --stage 1 --workers 2 --model 85m

Prints one JSON line: {"tokens_per_s": ...} for all processes together. Each process runs one thread, like a
1-CPU Ray Train worker (Ray sets OMP_NUM_THREADS to the worker's CPUs), so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import GPT_85M, GPT_MODEL, MICRO_BATCH, REPO, gpt_sets

MODELS = {"small": GPT_MODEL, "85m": GPT_85M}
SPEC = "jobs/examples/gpt-zero3.yaml"
# Measured like the orch runs (train.report_every=WINDOW_STEPS, bench.common.steady_rate): tokens/s per window,
# median of the windows after the first, which holds the warm-up.
WINDOW_STEPS = 25
THREADS = 1  # per process: scaling.cpus_per_worker of the orch runs


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["torch", "deepspeed"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--stage", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="deepspeed mode: processes")
    parser.add_argument("--model", choices=MODELS, default="small")
    parser.add_argument("--micro", type=int, default=MICRO_BATCH)
    parser.add_argument("--window", type=int, default=WINDOW_STEPS)
    return parser.parse_args(argv)


def job_sets(args: argparse.Namespace) -> list[str]:
    """The --set list the orch run of the same figure submits (bench.bench_overhead uses it too)."""
    return gpt_sets(args.steps, args.workers, args.stage, args.window, model=MODELS[args.model], micro=args.micro)


def process_env(rank: int, world: int, port: int) -> dict[str, str]:
    """What a distributed launcher sets for one process; OMP_NUM_THREADS as Ray sets it for a 1-CPU worker."""
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "LOCAL_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(THREADS),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def launch(argv: list[str], world: int) -> dict[str, Any]:
    """Start `world` processes of this script and return rank 0's result; any failing rank fails the run (and
    stops the others, which would otherwise wait for it in their next collective forever)."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="orch-plain-") as tmp:
        logs = [(open(Path(tmp) / f"{rank}.out", "w+"), open(Path(tmp) / f"{rank}.err", "w+"))  # noqa: SIM115
                for rank in range(world)]
        procs = [subprocess.Popen([sys.executable, "-m", "bench.plain_loops", *argv], cwd=REPO, text=True,
                                  env=process_env(rank, world, port), stdout=out, stderr=err)
                 for rank, (out, err) in enumerate(logs)]
        while any(proc.poll() is None for proc in procs):
            if any(proc.returncode not in (None, 0) for proc in procs):
                for proc in procs:
                    proc.kill()
                    proc.wait()
            time.sleep(0.2)
        texts = []
        for out, err in logs:
            out.seek(0)
            err.seek(0)
            texts.append((out.read(), err.read()))
            out.close()
            err.close()
    failed = [rank for rank, proc in enumerate(procs) if proc.returncode != 0]
    if failed:  # the rank that failed on its own, not one stopped above
        rank = next((r for r in failed if procs[r].returncode != -signal.SIGKILL), failed[0])
        raise RuntimeError(f"plain DeepSpeed rank {rank} exited with {procs[rank].returncode}:\n"
                           f"{texts[rank][1][-3000:]}")
    return json.loads(texts[0][0].strip().splitlines()[-1])


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from orchestrator.core.deepspeed_config import build_deepspeed_config
    from orchestrator.core.spec import load_spec_file
    from orchestrator.runtime.worker import build_optimizer
    from orchestrator.workloads.gpt.config import GPTDataConfig, GPTModelConfig
    from orchestrator.workloads.gpt.data import TokenDataset, load_tokens
    from orchestrator.workloads.gpt.model import GPT

    torch.set_num_threads(THREADS)
    spec = load_spec_file(REPO / SPEC, job_sets(args))
    torch.manual_seed(spec.train.seed)
    cfg = GPTModelConfig(**spec.model)
    dataset = TokenDataset(load_tokens(GPTDataConfig(**spec.data), cfg.vocab_size, read_bytes=None), 0.1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.mode == "deepspeed":
        import deepspeed

        config = build_deepspeed_config(spec, world)
        deepspeed.init_distributed(dist_backend="gloo")
        model = GPT(cfg, activation_checkpointing=spec.deepspeed.activation_checkpointing)
        optimizer = build_optimizer(model, spec)
        # orch's worker hands DeepSpeed its warmup/cosine schedule; a constant multiplier costs the same per step.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda _: 1.0)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)

        def step(x: torch.Tensor, y: torch.Tensor) -> float:
            _, loss = engine(x, y)
            engine.backward(loss)
            engine.step()
            return loss.item()  # as orch's loop logs it: one sync per step
    else:
        model = GPT(cfg, activation_checkpointing=spec.deepspeed.activation_checkpointing)
        optimizer = build_optimizer(model, spec)
        clip = spec.deepspeed.gradient_clipping

        def step(x: torch.Tensor, y: torch.Tensor) -> float:
            _, loss = model(x, y)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.item()

    generator = torch.Generator().manual_seed(rank)
    micro = spec.deepspeed.micro_batch_size
    rates = []
    window_started = time.perf_counter()
    for i in range(1, args.steps + 1):
        step(*dataset.batch(generator, micro, cfg.seq_len))
        if i % args.window == 0:
            now = time.perf_counter()
            # Steps are synchronous across ranks, so every rank's window is the group's: world x its tokens.
            rates.append(world * args.window * micro * cfg.seq_len / (now - window_started))
            window_started = now
    return {"tokens_per_s": statistics.median(rates[1:] if len(rates) > 1 else rates), "windows": len(rates),
            "world_size": world}


def main() -> None:
    argv = sys.argv[1:]
    args = parse(argv)
    if args.mode == "deepspeed" and "RANK" not in os.environ:
        result = launch(argv, args.workers)
    else:
        if args.mode == "torch":
            os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
        result = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result), flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
