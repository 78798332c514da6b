"""Orchestration overhead: steady-state GPT training throughput through `orch` (Ray Train + DeepSpeed) on 1 and
2 workers vs a plain DeepSpeed script on as many processes (no Ray), same model, batch, optimizer and DeepSpeed
config, one thread per worker; plus the same model in a plain PyTorch loop for scale.

    python -m bench.run --only overhead          # the ~85M GPT (tens of minutes)
    python -m bench.bench_overhead --steps 15 --repeats 2   # the same, shorter (~20 min)
    python -m bench.bench_overhead --quick       # the small GPT, a few steps, one repeat: checks the plumbing
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass

from bench.common import REPO, Bench, steady_rate
from bench.plain_loops import MODELS, job_sets, parse

STAGE = 1
# Single runs on a small shared machine vary by several percent; the median of interleaved repeats does not
# favour whichever setup happened to run during a quiet moment.
REPEATS = 3


@dataclass(frozen=True)
class Plan:
    model: str  # a bench.plain_loops.MODELS key
    micro: int
    steps: int
    window: int  # steps per throughput window; the first window (warm-up) is left out
    repeats: int


# Seconds per step at micro batch 4 on one thread (11.7 s with the machine busy): 6 windows of 5 steps, the first
# left out; ~40 min for all setups and repeats.
FULL = Plan("85m", micro=4, steps=30, window=5, repeats=REPEATS)
QUICK = Plan("small", micro=4, steps=12, window=3, repeats=1)
SETUPS = ("torch-1", "deepspeed-1", "deepspeed-2", "orch-1", "orch-2")


def plain_argv(mode: str, workers: int, plan: Plan) -> list[str]:
    return [mode, "--steps", str(plan.steps), "--stage", str(STAGE), "--workers", str(workers), "--model",
            plan.model, "--micro", str(plan.micro), "--window", str(plan.window)]


def plain(mode: str, workers: int, plan: Plan, env: dict[str, str]) -> float:
    proc = subprocess.run([sys.executable, "-m", "bench.plain_loops", *plain_argv(mode, workers, plan)], cwd=REPO,
                          env=env, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"plain {mode} on {workers} processes failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["tokens_per_s"]


def orch(bench: Bench, workers: int, plan: Plan, repeat: int) -> float:
    sets = job_sets(parse(plain_argv("deepspeed", workers, plan)))
    job = bench.submit("jobs/examples/gpt-zero3.yaml", *sets, f"name=overhead-{workers}w-{repeat}")
    return steady_rate(bench.metrics(job), "tokens_per_s")


def measure(bench: Bench, setup: str, plan: Plan, repeat: int) -> float:
    kind, workers = setup.rsplit("-", 1)
    return orch(bench, int(workers), plan, repeat) if kind == "orch" else plain(kind, int(workers), plan, bench.env)


def params(plan: Plan) -> int:
    from orchestrator.workloads.gpt.config import GPTModelConfig, param_count

    return param_count(GPTModelConfig(**MODELS[plan.model]))


def run(bench: Bench, plan: Plan = FULL) -> str:
    runs: dict[str, list[float]] = {setup: [] for setup in SETUPS}
    for repeat in range(plan.repeats):
        for setup in SETUPS:  # interleaved: every setup once per round
            runs[setup].append(measure(bench, setup, plan, repeat))
    return table({setup: statistics.median(v) for setup, v in runs.items()}, runs, plan)


def table(tps: dict[str, float], runs: dict[str, list[float]], plan: Plan) -> str:
    spread = max((max(v) - min(v)) / statistics.median(v) for v in runs.values())
    model = MODELS[plan.model]
    return "\n".join([
        f"GPT {params(plan) / 1e6:.1f}M parameters (d_model {model['d_model']}, {model['n_layer']} layers, "
        f"{model['n_head']} heads, seq {model['seq_len']}, vocab {model['vocab_size']}), ZeRO-{STAGE}, fp32, micro "
        f"batch {plan.micro} x {model['seq_len']} tokens per worker, 1 thread per worker, {plan.steps} steps; "
        f"tokens/s of all workers over {plan.window}-step windows, the first (warm-up) left out; median of "
        f"{plan.repeats} interleaved runs each (largest spread between a setup's runs: {spread:.1%}).",
        "",
        "| setup | tokens/s | vs plain DeepSpeed, same process count |",
        "| --- | ---: | ---: |",
        f"| plain PyTorch loop, 1 process | {tps['torch-1']:,.0f} | {tps['torch-1'] / tps['deepspeed-1']:.3f} |",
        f"| plain DeepSpeed script, 1 process | {tps['deepspeed-1']:,.0f} | 1.000 |",
        f"| orch (Ray Train + DeepSpeed), 1 worker | {tps['orch-1']:,.0f} | "
        f"**{tps['orch-1'] / tps['deepspeed-1']:.3f}** |",
        f"| plain DeepSpeed script, 2 processes (gloo) | {tps['deepspeed-2']:,.0f} | 1.000 |",
        f"| orch (Ray Train + DeepSpeed), 2 workers | {tps['orch-2']:,.0f} | "
        f"**{tps['orch-2'] / tps['deepspeed-2']:.3f}** |",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the small GPT, a few steps, one repeat")
    parser.add_argument("--steps", type=int, default=FULL.steps, help="steps per run (multiple of 5)")
    parser.add_argument("--repeats", type=int, default=FULL.repeats, help="interleaved runs per setup")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan("85m", micro=4, steps=args.steps, window=5, repeats=args.repeats)
    with Bench() as b:
        print(run(b, plan))
