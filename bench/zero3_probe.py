"""Measure one ZeRO-3 GPT configuration outside Ray: 2 gloo processes, the same model, optimizer and
DeepSpeed config `orch submit` would use, and each rank's resident memory at every phase.

    python -m bench.zero3_probe --d-model 2048 --n-layer 20 --seq-len 128 --steps 3 --precision bf16

Prints one JSON line per rank: RSS after model build / initialize / each step, peak RSS (VmHWM),
seconds per step, the loss per step and memstats' model-state breakdown at the first update.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from typing import Any

import torch
import torch.multiprocessing as mp


def _rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def _spec(args: argparse.Namespace) -> Any:
    from orchestrator.core.spec import JobSpec

    return JobSpec(**{
        "name": "zero3-probe", "workload": "gpt",
        "model": {"n_layer": args.n_layer, "n_head": args.n_head, "d_model": args.d_model,
                  "seq_len": args.seq_len, "vocab_size": 256},
        "scaling": {"num_workers": args.workers},
        "deepspeed": {"zero_stage": args.stage, "precision": args.precision, "micro_batch_size": args.micro,
                      "activation_checkpointing": not args.no_ckpt,
                      "config": json.loads(args.ds_config) if args.ds_config else {}},
        "train": {"steps": args.steps, "lr": 3e-4},
    })


def _run(rank: int, args: argparse.Namespace, port: int) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(args.workers),
                       "LOCAL_WORLD_SIZE": str(args.workers), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "LOCAL_SIZE": str(args.workers)})  # as orchestrator/worker.py sets it
    torch.set_num_threads(1)
    if not args.no_mallopt:
        from orchestrator.runtime.host_memory import pin_mmap_threshold

        pin_mmap_threshold()  # as orchestrator/worker.py does
    import deepspeed

    from orchestrator.core.deepspeed_config import build_deepspeed_config
    from orchestrator.runtime.memstats import measure_at_first_update
    from orchestrator.runtime.worker import build_optimizer
    from orchestrator.workloads.gpt.config import GPTModelConfig, param_count
    from orchestrator.workloads.gpt.model import GPT

    spec = _spec(args)
    ds_config = build_deepspeed_config(spec, args.workers)
    deepspeed.init_distributed(dist_backend="gloo")
    out: dict[str, Any] = {"rank": rank, "rss_start": _rss()[0]}
    cfg = GPTModelConfig(**spec.model)
    ctx = deepspeed.zero.Init(config_dict_or_path=ds_config) if args.stage == 3 else torch.no_grad()
    with ctx:
        model = GPT(cfg, activation_checkpointing=not args.no_ckpt)
    out["rss_model"] = _rss()[0]
    optimizer = build_optimizer(model, spec)  # as orchestrator/worker.py builds it
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    out["rss_init"], out["peak_init"] = _rss()
    memo: dict[str, Any] = {}
    measure_at_first_update(engine, lambda memory: memo.update(memory, rss_at_update=_rss()[0]))
    gen = torch.Generator().manual_seed(rank)
    steps, losses, rss_steps, phases = [], [], [], []
    for _ in range(args.steps):
        x = torch.randint(0, 256, (args.micro, cfg.seq_len), generator=gen)
        t0 = time.perf_counter()
        _, loss = engine(x, x)
        hwm_fwd = _rss()[1]
        engine.backward(loss)
        hwm_bwd = _rss()[1]
        engine.step()
        steps.append(round(time.perf_counter() - t0, 2))
        phases.append([round(v / 2**20) for v in (hwm_fwd, hwm_bwd, _rss()[1])])
        losses.append(round(loss.item(), 4))
        rss_steps.append(_rss()[0])
    out.update(params=param_count(cfg), s_per_step=steps, loss=losses, rss_steps=rss_steps, peak_rss=_rss()[1],
               hwm_mib_fwd_bwd_step=phases,
               memstats=memo, zero=ds_config["zero_optimization"])
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-model", type=int, default=2048)
    parser.add_argument("--n-layer", type=int, default=20)
    parser.add_argument("--n-head", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--no-ckpt", action="store_true")
    parser.add_argument("--no-mallopt", action="store_true", help="keep glibc's dynamic mmap threshold")
    parser.add_argument("--ds-config", default="", help="JSON merged over the derived DeepSpeed config")
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_run, args=(args, port), nprocs=args.workers, join=True)


if __name__ == "__main__":
    main()
