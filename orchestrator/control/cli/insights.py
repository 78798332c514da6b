"""`orch estimate` (memory, FLOPs and throughput before launch) and `orch report` (an HTML page after)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.core.errors import OrchError
from orchestrator.core.units import human_size

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def cmd_estimate(args: argparse.Namespace) -> int:
    from orchestrator.control.admission import worker_memory_budget
    from orchestrator.core.estimate import (
        MODEL_STATE_COMPONENTS,
        GiB,
        deepspeed_estimate,
        estimate,
    )
    from orchestrator.core.spec import load_spec_file

    spec = load_spec_file(args.spec, args.set or [])
    est = estimate(spec)
    est.deepspeed = deepspeed_estimate(est, spec)
    budget = None
    if args.memory_per_worker is not None or _env_budget_set():
        budget, source = worker_memory_budget([], spec.scaling.cpus_per_worker, args.memory_per_worker)
    if args.probe:
        from orchestrator.control.probe import run_probe

        err.print("[dim]probing: timing a few training steps of this model on this machine...[/]")
        est.probe = run_probe(spec)
    data = est.as_dict()
    if budget is not None:
        data["budget_bytes_per_worker"] = budget
        data["fits"] = est.total <= budget
    if args.json:
        print(json.dumps(data, indent=2))
        return 0 if budget is None or data["fits"] else 1

    ds = spec.deepspeed
    table = Table("COMPONENT", "PER WORKER", "B/PARAM", "WHERE", "NOTE",
                  title=f"{spec.name}: {est.params:,} parameters, ZeRO-{ds.zero_stage}, {ds.precision}, "
                        f"{est.num_workers} workers, micro batch {ds.micro_batch_size}")
    for c in est.components:
        per_param = f"{c.bytes / est.params:.2f}" if c.name in MODEL_STATE_COMPONENTS else ""
        where = c.where if spec.scaling.use_gpu else "host"
        table.add_row(c.name, human_size(c.bytes, 2), per_param, where, c.note)
    table.add_row("[bold]model states[/]", f"[bold]{human_size(est.model_states, 2)}[/]",
                  f"{est.model_states / est.params:.2f}", "", "params + grads + master + optimizer states")
    table.add_row("[bold]total[/]", f"[bold]{human_size(est.total, 2)}[/]", "", "", "per worker")
    out.print(table)
    n = est.num_workers
    out.print(f"16/N rule (mixed-precision Adam, ZeRO-3): {human_size(16 * est.params / n, 2)} per worker; "
              f"everything on one worker (ZeRO-0 fp32): {human_size(16 * est.params, 2)}")
    if est.deepspeed:
        d = est.deepspeed
        out.print(f"DeepSpeed {d['function']} ({d['assumes']}): {human_size(d['per_gpu_bytes'], 2)} per GPU, "
                  f"{human_size(d['per_node_cpu_bytes'], 2)} host per node")
    else:
        out.print("DeepSpeed has no estimator for ZeRO-0 (plain data parallel).")
    unit = est.token_unit
    out.print(f"FLOPs: {est.flops_per_token:.3g} per {unit[:-1]}, {est.flops_per_step:.3g} per step "
              f"({est.tokens_per_step:,} {unit}), {est.flops_per_step / n:.3g} per worker per step")
    if est.probe:
        p = est.probe
        out.print(f"Probe on this machine ({p['threads']} threads, {p['steps_timed']} steps): "
                  f"{p['step_time_s'] * 1000:.0f} ms/step, {p[f'{unit}_per_s_per_worker']:,.0f} {unit}/s per worker, "
                  f"<= {p[f'{unit}_per_s_job_upper_bound']:,.0f} {unit}/s for the job (no communication), "
                  f"{p['achieved_flops_per_s_per_worker'] / 1e9:.2f} GFLOP/s achieved")
    if budget is not None:
        verdict = "[green]fits[/]" if est.total <= budget else "[red]does not fit[/]"
        out.print(f"Budget {budget / GiB:.2f} GiB per worker ({source}): {verdict}")
        return 0 if est.total <= budget else 1
    return 0


def _env_budget_set() -> bool:
    import os

    return bool(os.environ.get("ORCH_WORKER_MEMORY_GB"))


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.control.manager import JobManager
    from orchestrator.control.report import build_report, publish
    from orchestrator.storage import open_store

    rec = JobManager().db.get(args.job)
    store = open_store(rec.storage_uri)
    report = build_report(rec, store)
    keys = publish(report, store)
    stored = f"{rec.storage_uri}/{keys[-1]}"
    err.print(f"Stored {stored} ({len(report.pngs)} plots)")
    if args.out:
        target = Path(args.out)
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name, png in report.pngs.items():
                (target / name).write_bytes(png)
            (target / "report.html").write_text(report.html)
        except OSError as exc:
            raise OrchError(f"--out {target}: cannot write the report there ({exc.strerror}). Pick a writable "
                            "directory.") from None
        err.print(f"Wrote {target / 'report.html'}")
    print(target / "report.html" if args.out else stored)  # stdout: just the page, for scripts
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("estimate", cmd_estimate, "Per-worker memory, FLOPs and (with --probe) throughput of a job spec.")
    p.add_argument("spec")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field (dotted path)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--probe", action="store_true", help="time a few real training steps on this machine")
    p.add_argument("--memory-per-worker", type=float, metavar="GiB",
                   help="check against this budget (default: ORCH_WORKER_MEMORY_GB if set); exit 1 if it does not fit")
    p = add("report", cmd_report, "Write a self-contained HTML report of a job or campaign (stored with its results).")
    p.add_argument("job")
    p.add_argument("--out", help="also write report.html and its PNGs to this directory")
