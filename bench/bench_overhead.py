"""Orchestration overhead: steady-state GPT training throughput through `orch` (Ray Train + DeepSpeed, 1 and
2 workers) vs the same model and batch in a plain PyTorch loop and a plain DeepSpeed script without Ray."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from bench.common import REPO, Bench, gpt_sets, steady_rate
from bench.plain_loops import WINDOW_STEPS

STEPS = 150
STAGE = 1
# Single runs on a small shared machine vary by several percent; the median of interleaved repeats does not
# favour whichever setup happened to run during a quiet moment.
REPEATS = 3


def plain(mode: str, env: dict[str, str]) -> float:
    proc = subprocess.run([sys.executable, "-m", "bench.plain_loops", mode, "--steps", str(STEPS), "--stage",
                           str(STAGE)], cwd=REPO, env=env, text=True, capture_output=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["tokens_per_s"]


def run(bench: Bench) -> str:
    runs: dict[str, list[float]] = {"torch": [], "deepspeed": [], "orch-1": [], "orch-2": []}
    for repeat in range(REPEATS):
        runs["torch"].append(plain("torch", bench.env))
        runs["deepspeed"].append(plain("deepspeed", bench.env))
        for workers in (1, 2):
            sets = gpt_sets(STEPS, workers, STAGE, report_every=WINDOW_STEPS)
            job = bench.submit("jobs/examples/gpt-zero3.yaml", *sets, f"name=overhead-{workers}w-{repeat}")
            runs[f"orch-{workers}"].append(steady_rate(bench.metrics(job), "tokens_per_s"))
    torch_tps, ds_tps, orch1_tps, orch2_tps = (statistics.median(v) for v in runs.values())
    spread = max((max(v) - min(v)) / statistics.median(v) for v in runs.values())
    return "\n".join([
        f"GPT {STEPS} steps, ZeRO-{STAGE}, fp32, micro batch 16 x 128 tokens, 1 thread per worker; median of "
        f"{REPEATS} interleaved runs each (largest spread between a setup's runs: {spread:.1%}).",
        "",
        "| setup | tokens/s | vs plain DeepSpeed (1 process) |",
        "| --- | ---: | ---: |",
        f"| plain PyTorch loop, 1 process | {torch_tps:,.0f} | {torch_tps / ds_tps:.3f} |",
        f"| plain DeepSpeed script, 1 process | {ds_tps:,.0f} | 1.000 |",
        f"| orch (Ray Train + DeepSpeed), 1 worker | {orch1_tps:,.0f} | **{orch1_tps / ds_tps:.3f}** |",
        f"| orch (Ray Train + DeepSpeed), 2 workers | {orch2_tps:,.0f} | {orch2_tps / ds_tps:.3f} |",
    ])


if __name__ == "__main__":
    with Bench() as b:
        print(run(b))
