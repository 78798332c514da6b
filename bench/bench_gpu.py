"""GPU mode: tokens/s and MFU of GPT jobs on one GPU through `orch`, bf16, ZeRO-1 and ZeRO-3: the GPT-2-small shape
(124M parameters) and a 1.0B-parameter model. Measures only where torch sees a CUDA device; elsewhere the section
says so."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import yaml

from bench.common import REPO, Bench, steady_rate

# What strong public stacks report for ~1B-parameter models on H100 (the reference), as the baseline.
REFERENCE_MFU = 0.40
STAGES = (1, 3)
# BENCH_GPU_BUDGET_S bounds the whole section (a GPU lease is short): a run that would start with less than
# MIN_START_S left is skipped, and each run gets at most its case's timeout_s and what is left; a run cut off is
# cancelled and its row says so, so one hung job costs neither the others nor the figures already measured.
MIN_START_S = 45.0


@dataclass(frozen=True)
class Case:
    label: str
    spec: str
    micro_batch: int  # x seq_len tokens, no gradient accumulation
    steps: int
    report_every: int
    timeout_s: float
    extra: tuple[str, ...] = ()  # further --set overrides


CASES = (
    # 16 x 1024 tokens with GPT-2's 50304-token fp32 logits fits an 80 GB H100.
    Case("124M", "jobs/examples/gpt-gpu.yaml", micro_batch=16, steps=60, report_every=10, timeout_s=120),
    # ~16 B/param of model states (16 GB) + activations of 16 x 1024 tokens (~23 GB) on a 141 GB H200.
    Case("1.0B", "jobs/examples/gpt-1b-gpu.yaml", micro_batch=16, steps=30, report_every=5, timeout_s=180),
)


def job_sets(case: Case, stage: int) -> list[str]:
    """The `--set` overrides of one measured run: 1 GPU, no checkpoints or evals in the timed steps, no retries."""
    return [f"name=gpu-{case.label.lower()}-zero{stage}", f"deepspeed.zero_stage={stage}",
            "scaling.num_workers=1", f"deepspeed.micro_batch_size={case.micro_batch}",
            "deepspeed.gradient_accumulation_steps=1", f"train.steps={case.steps}",
            f"train.report_every={case.report_every}", "train.warmup_steps=0", "train.eval_every=0",
            "train.eval_batches=1", "checkpoint.every_steps=0", "checkpoint.at_end=false",
            "failure.max_restarts=0", *case.extra]


@dataclass
class Result:
    case: Case
    stage: int
    params: int
    seconds: float
    tokens_per_s: float | None = None
    step_time_s: float | None = None
    mfu: float | None = None
    error: str | None = None  # why there are no figures
    log_tail: str = ""


def model_config(case: Case) -> Any:
    """The case's GPTModelConfig: its spec's model section with the case's model.* overrides."""
    from orchestrator.workloads.gpt.config import GPTModelConfig

    model = dict(yaml.safe_load((REPO / case.spec).read_text())["model"])
    for item in case.extra:
        key, _, value = item.partition("=")
        if key.startswith("model."):
            model[key.removeprefix("model.")] = yaml.safe_load(value)
    return GPTModelConfig(**model)


def param_count(case: Case) -> int:
    from orchestrator.workloads.gpt.config import param_count as count

    return count(model_config(case))


def measure(bench: Bench, case: Case, stage: int, timeout: float) -> Result:
    """Submit one run and wait for it; a failure or timeout becomes a row with the reason and the job's log tail."""
    sets = job_sets(case, stage)
    args = ["submit", case.spec, *[x for s in sets for x in ("--set", s)], "--wait"]
    result = Result(case, stage, param_count(case), 0.0)
    started = time.perf_counter()
    try:
        proc = bench.orch(*args, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        job = _job_named(bench, sets[0].removeprefix("name="))
        if job:
            bench.orch("cancel", job, check=False, timeout=60)
        result.seconds = time.perf_counter() - started
        result.error, result.log_tail = f"timed out after {timeout:.0f} s", _log_tail(bench, job)
        return result
    result.seconds = time.perf_counter() - started
    lines = proc.stdout.strip().splitlines()
    job = lines[-1].strip() if lines else _job_named(bench, sets[0].removeprefix("name="))
    if proc.returncode != 0:
        result.error = f"`orch submit` exited {proc.returncode}"
        result.log_tail = (proc.stderr.strip()[-1500:] + "\n" + _log_tail(bench, job)).strip()
        return result
    rows = bench.metrics(job)
    try:
        result.tokens_per_s = steady_rate(rows, "tokens_per_s")
        result.step_time_s = steady_rate(rows, "step_time_s")
        result.mfu = steady_rate(rows, "mfu")
    except (ValueError, KeyError):  # statistics.median of nothing: the job reported no such figure
        result.error = "no tokens/s or MFU in the job's metrics"
        result.log_tail = json.dumps(rows[-3:], indent=1)
    return result


def _job_named(bench: Bench, name: str) -> str | None:
    proc = bench.orch("list", "--json", check=False, timeout=60)
    try:
        jobs = [j for j in json.loads(proc.stdout) if j.get("name") == name]
    except ValueError:
        return None
    return jobs[-1]["id"] if jobs else None


def _log_tail(bench: Bench, job: str | None, lines: int = 40) -> str:
    if not job:
        return ""
    try:
        proc = bench.orch("logs", job, check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return ""
    return "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-lines:])


def table(results: list[Result]) -> str:
    lines = ["| model | parameters | ZeRO | micro batch | tokens/s | s/step | MFU | vs 40% reference MFU |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        seq = model_config(r.case).seq_len
        head = f"| {r.case.label} | {r.params / 1e6:,.0f}M | {r.stage} | {r.case.micro_batch} x {seq}"
        if r.error:
            lines.append(f"{head} | {r.error} | | | |")
        else:
            lines.append(f"{head} | {r.tokens_per_s:,.0f} | {r.step_time_s:.3f} | {r.mfu:.1%} | "
                         f"**{r.mfu / REFERENCE_MFU:.2f}** |")
    return "\n".join(lines)


def report(results: list[Result], device: str) -> str:
    cases = ", ".join(f"`{c.spec}` ({c.label}: {c.steps} steps)" for c in dict.fromkeys(r.case for r in results))
    text = [f"{cases} on 1 x {device} through `orch submit`, bf16, no gradient accumulation, fused AdamW. tokens/s "
            "is the median of the report windows after the first (so start-up and the first steps are left out); "
            "MFU counts 6N + attention FLOPs per token against the dense bf16 peak (989 TFLOP/s for H100/H200).",
            "", table(results)]
    for r in results:
        if r.error and r.log_tail:
            text += ["", f"{r.case.label} ZeRO-{r.stage}, {r.error}; end of its log:", "", "```",
                     r.log_tail[-3000:], "```"]
    return "\n".join(text)


def run(bench: Bench, cases: tuple[Case, ...] = CASES) -> str:
    import torch

    if not torch.cuda.is_available():
        specs = " and ".join(f"`{c.spec}`" for c in cases)
        return ("Not measured: this machine has no CUDA device. On a GPU node, `python -m bench.run --only gpu` "
                f"runs {specs} on one GPU at ZeRO-1 and ZeRO-3 and fills this in.")
    results = run_cases(bench, cases)
    return report(results, torch.cuda.get_device_name())


def run_cases(bench: Bench, cases: tuple[Case, ...], budget_s: float | None = None) -> list[Result]:
    if budget_s is None and os.environ.get("BENCH_GPU_BUDGET_S"):
        budget_s = float(os.environ["BENCH_GPU_BUDGET_S"])
    deadline = time.monotonic() + (budget_s if budget_s is not None else float("inf"))
    results = []
    # The largest model first: its figures are the ones this section exists for.
    for case in sorted(cases, key=lambda c: -param_count(c)):
        for stage in STAGES:
            left = deadline - time.monotonic()
            if left < MIN_START_S:
                result = Result(case, stage, param_count(case), 0.0, error="skipped: out of time")
            else:
                result = measure(bench, case, stage, min(case.timeout_s, left))
            print(f"[gpu] {case.label} ZeRO-{stage}: {_summary(result)} ({result.seconds:.0f} s)", flush=True)
            print("[gpu-json] " + json.dumps(_as_json(result)), flush=True)
            if result.log_tail:
                print(result.log_tail, flush=True)
            results.append(result)
    order = {c.label: i for i, c in enumerate(cases)}
    return sorted(results, key=lambda r: (order[r.case.label], r.stage))


def _summary(result: Result) -> str:
    if result.error:
        return result.error
    assert result.tokens_per_s is not None and result.mfu is not None
    return f"{result.tokens_per_s:,.0f} tokens/s, MFU {result.mfu:.1%}"


def _as_json(r: Result) -> dict[str, Any]:
    return {"model": r.case.label, "spec": r.case.spec, "params": r.params, "zero_stage": r.stage,
            "micro_batch": r.case.micro_batch, "steps": r.case.steps, "tokens_per_s": r.tokens_per_s,
            "step_time_s": r.step_time_s, "mfu": r.mfu, "error": r.error, "seconds": round(r.seconds, 1)}


if __name__ == "__main__":
    with Bench() as b:
        print(run(b))
