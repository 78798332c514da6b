"""Largest model trained here, per ZeRO stage: on 2 workers, bf16, micro batch 1, activation checkpointing, the
1B example's GPT width with as many layers as `orch estimate` says fit a per-worker memory budget, trained 10
steps through `orch submit --memory-per-worker BUDGET --wait`. Beside each: the measured peak RSS per worker,
the estimate's error, seconds per step, and the physical bound (budget / model-state bytes per parameter).

    python -m bench.run --only largest                                    # every stage, full width
    python -m bench.bench_largest --stage 3                               # one stage
    python -m bench.bench_largest --stage 3 --d-model 256 --n-head 4 --budget-gb 1.5   # a minutes-long check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import dataclass

from bench.common import REPO, Bench
from orchestrator.core.estimate import Estimate, GiB, estimate
from orchestrator.core.spec import load_spec_file

SPEC = "jobs/examples/gpt-1b-zero3.yaml"
STAGES = (0, 1, 2, 3)
WORKERS = 2
STEPS = 10
D_MODEL, N_HEAD = 2048, 16  # the 1B example's width (seq 128 and vocab 256 come from its spec)
MAX_LAYERS = 4096  # the search's upper end; far beyond any budget a single machine has
# Ray's memory monitor kills workers once the node passes 95% of its RAM; below that, Ray's own processes, the
# driver and the OS take ~4 GiB. At (RAM - 3 GiB) / 2 (10.2 GiB here) every stage's workers were killed.
MONITOR_FRACTION = 0.95
RESERVED_BYTES = 4 * GiB


@dataclass(frozen=True)
class Result:
    stage: int
    n_layer: int
    est: Estimate | None
    budget: int
    peak_rss: int | None = None  # the larger of the workers' peaks over training
    s_per_step: float | None = None
    error: str | None = None  # why the run did not give figures


def bytes_per_param(stage: int, workers: int = WORKERS) -> float:
    """Model-state bytes per parameter per worker in bf16 mixed precision with Adam: 2 (bf16 weights) + 2 (bf16
    grads) + 4 (fp32 master) + 8 (moments), of which each stage partitions more over the workers."""
    return {0: 16.0, 1: 4 + 12 / workers, 2: 2 + 14 / workers, 3: 16 / workers}[stage]


def physical_bound(budget: int, stage: int, workers: int = WORKERS) -> int:
    """The parameter count whose model states alone fill the budget: no runtime, buffers or activations."""
    return int(budget / bytes_per_param(stage, workers))


def default_budget() -> int:
    """Per-worker budget: the machine's RAM less what the rest needs, shared by the workers."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * MONITOR_FRACTION - RESERVED_BYTES) // WORKERS


def job_sets(stage: int, n_layer: int, d_model: int = D_MODEL, n_head: int = N_HEAD) -> list[str]:
    return [f"model.d_model={d_model}", f"model.n_head={n_head}", f"model.n_layer={n_layer}",
            f"deepspeed.zero_stage={stage}", "deepspeed.precision=bf16", "deepspeed.micro_batch_size=1",
            "deepspeed.gradient_accumulation_steps=1", "deepspeed.activation_checkpointing=true",
            f"scaling.num_workers={WORKERS}", f"train.steps={STEPS}", "train.report_every=1", "train.eval_every=0",
            "checkpoint.every_steps=0", "checkpoint.at_end=false", "failure.max_restarts=0",
            f"name=largest-zero{stage}-{n_layer}l"]


def estimate_for(stage: int, n_layer: int, d_model: int = D_MODEL, n_head: int = N_HEAD) -> Estimate:
    return estimate(load_spec_file(REPO / SPEC, job_sets(stage, n_layer, d_model, n_head)))


def largest_n_layer(stage: int, budget: int, d_model: int = D_MODEL, n_head: int = N_HEAD,
                    limit: int = MAX_LAYERS) -> int:
    """The most layers whose estimated per-worker peak fits `budget` (0 if not even one layer does).

    The estimate grows with every layer, so a bisection finds the edge in a dozen estimates.
    """
    def fits(n: int) -> bool:
        return estimate_for(stage, n, d_model, n_head).total <= budget

    if not fits(1):
        return 0
    low, high = 1, limit  # fits(low) holds; fits(high + 1) is not known to
    if fits(high):
        return high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def steady_s_per_step(rows: list[dict]) -> float | None:
    """Median step time of steps 2..STEPS (step 1 holds the first-touch allocations and the comm op's warm-up)."""
    times = [r["step_time_s"] for r in rows if "step_time_s" in r and not r.get("final") and r.get("step", 0) >= 2]
    return statistics.median(times) if times else None


def measure(bench: Bench, stage: int, budget: int, d_model: int = D_MODEL, n_head: int = N_HEAD) -> Result:
    n_layer = largest_n_layer(stage, budget, d_model, n_head)
    if n_layer == 0:
        return Result(stage, 0, None, budget, error="not even one layer fits the budget")
    est = estimate_for(stage, n_layer, d_model, n_head)
    sets = [x for s in job_sets(stage, n_layer, d_model, n_head) for x in ("--set", s)]
    proc = bench.orch("submit", SPEC, *sets, "--memory-per-worker", f"{budget / GiB:.4f}", "--wait", check=False)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        return Result(stage, n_layer, est, budget, error=_last_line(proc.stderr))
    root = bench.job_root(lines[-1])
    rows = bench.metrics(lines[-1]) if (root / "metrics.jsonl").exists() else []
    steps = [r for r in rows if "loss" in r and not r.get("final")]
    peaks = [json.loads(p.read_text()).get("peak_rss_training") for p in sorted((root / "workers").glob("rank-*"))]
    if proc.returncode != 0 or len(steps) < STEPS:
        return Result(stage, n_layer, est, budget, error=f"{len(steps)} of {STEPS} steps; {_last_line(proc.stderr)}")
    peak = max(p for p in peaks if p) if any(peaks) else None
    return Result(stage, n_layer, est, budget, peak, steady_s_per_step(rows))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:300]


def table(results: list[Result], d_model: int = D_MODEL) -> str:
    budget = results[0].budget if results else default_budget()
    lines = [
        f"GPT d_model {d_model}, seq 128, vocab 256, bf16, micro batch 1, activation checkpointing, {WORKERS} "
        f"workers, {STEPS} steps, budget {budget / GiB:.2f} GiB per worker (`--memory-per-worker`); n_layer is "
        "the largest `orch estimate` fits in the budget. Peak RSS: the larger worker's `peak_rss_training`. "
        "s/step: median of steps 2-10. Physical bound: budget / model-state bytes per parameter per worker.",
        "",
        "| ZeRO stage | n_layer | parameters | estimate / worker | peak RSS / worker | estimate error | s/step "
        "| physical bound | bytes/param/worker | parameters / bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        bound = physical_bound(r.budget, r.stage)
        params = f"{r.est.params / 1e6:,.1f}M" if r.est else "-"
        est = f"{r.est.total / GiB:.2f} GiB" if r.est else "-"
        if r.error or r.peak_rss is None:
            measured, err = f"failed: {r.error or 'no peak RSS recorded'}", "-"
        else:
            measured = f"{r.peak_rss / GiB:.2f} GiB"
            err = f"{(r.est.total - r.peak_rss) / r.peak_rss:+.1%}" if r.est else "-"
        step = f"{r.s_per_step:.2f}" if r.s_per_step is not None else "-"
        share = f"{r.est.params / bound:.2f}" if r.est else "-"
        lines.append(f"| {r.stage} | {r.n_layer} | {params} | {est} | {measured} | {err} | {step} | "
                     f"{bound / 1e6:,.1f}M | {bytes_per_param(r.stage):g} | {share} |")
    return "\n".join(lines)


def run(bench: Bench, stages: tuple[int, ...] = STAGES, budget: int | None = None, d_model: int = D_MODEL,
        n_head: int = N_HEAD) -> str:
    budget = budget or default_budget()
    return table([measure(bench, stage, budget, d_model, n_head) for stage in stages], d_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=STAGES, action="append", help="repeatable; default: all")
    parser.add_argument("--budget-gb", type=float, help="per-worker budget (default: (95%% of RAM - 4 GiB) / 2)")
    parser.add_argument("--d-model", type=int, default=D_MODEL)
    parser.add_argument("--n-head", type=int, default=N_HEAD)
    parser.add_argument("--plan", action="store_true", help="print the chosen n_layer per stage; run nothing")
    args = parser.parse_args()
    stages = tuple(args.stage or STAGES)
    budget = int(args.budget_gb * GiB) if args.budget_gb else default_budget()
    if args.plan:
        for stage in stages:
            n = largest_n_layer(stage, budget, args.d_model, args.n_head)
            est = estimate_for(stage, max(n, 1), args.d_model, args.n_head)
            print(f"ZeRO-{stage}: n_layer {n}, {est.params:,} parameters, estimate {est.total / GiB:.2f} GiB, "
                  f"bound {physical_bound(budget, stage):,}")
        return
    with Bench() as bench:
        print(run(bench, stages, budget, args.d_model, args.n_head))


if __name__ == "__main__":
    main()
