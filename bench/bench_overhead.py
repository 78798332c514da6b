"""Orchestration overhead: steady-state GPT training throughput through `orch` (Ray Train + DeepSpeed, 1 and
2 workers) vs the same model and batch in a plain PyTorch loop and a plain DeepSpeed script without Ray."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import REPO, Bench, gpt_sets, steady_rate

STEPS = 150
STAGE = 1


def plain(mode: str, env: dict[str, str]) -> float:
    proc = subprocess.run([sys.executable, "-m", "bench.plain_loops", mode, "--steps", str(STEPS), "--stage",
                           str(STAGE)], cwd=REPO, env=env, text=True, capture_output=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["tokens_per_s"]


def run(bench: Bench) -> str:
    torch_tps = plain("torch", bench.env)
    ds_tps = plain("deepspeed", bench.env)
    orch_tps = {}
    for workers in (1, 2):
        job = bench.submit("jobs/examples/gpt-zero3.yaml", *gpt_sets(STEPS, workers, STAGE, report_every=25),
                           f"name=overhead-{workers}w")
        orch_tps[workers] = steady_rate(bench.metrics(job), "tokens_per_s")
    return "\n".join([
        f"GPT {STEPS} steps, ZeRO-{STAGE}, fp32, micro batch 16 x 128 tokens, 1 thread per worker.",
        "",
        "| setup | tokens/s | vs plain DeepSpeed (1 process) |",
        "| --- | ---: | ---: |",
        f"| plain PyTorch loop, 1 process | {torch_tps:,.0f} | {torch_tps / ds_tps:.3f} |",
        f"| plain DeepSpeed script, 1 process | {ds_tps:,.0f} | 1.000 |",
        f"| orch (Ray Train + DeepSpeed), 1 worker | {orch_tps[1]:,.0f} | **{orch_tps[1] / ds_tps:.3f}** |",
        f"| orch (Ray Train + DeepSpeed), 2 workers | {orch_tps[2]:,.0f} | {orch_tps[2] / ds_tps:.3f} |",
    ])


if __name__ == "__main__":
    with Bench() as b:
        print(run(b))
