"""Run every benchmark and write BENCHMARKS.md:  python -m bench.run [--only NAME ...]

Each figure is a ratio against a baseline measured in the same run, on the same machine. Takes ~15-25 min on
2 CPUs. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import traceback

from bench import (
    bench_checkpoint,
    bench_data_prepare,
    bench_gpu,
    bench_largest,
    bench_latency,
    bench_manager,
    bench_overhead,
)
from bench.common import REPO, Bench, machine

IN_PROCESS = {
    "overhead": ("Orchestration overhead at ~85M parameters (target: orch >= 0.95 of plain DeepSpeed on 1 and 2 "
                 "workers)", bench_overhead.run),
    "latency": ("Submit-to-first-step latency", bench_latency.run),
    "checkpoint": ("Checkpoint stall and upload throughput", bench_checkpoint.run),
    "manager": ("Manager scaling", bench_manager.run),
    "gpu": ("GPU: tokens/s and MFU of the 124M and 1.0B GPT jobs on one GPU", bench_gpu.run),
    "data_prepare": ("`orch data prepare` throughput on 2 cores vs one process running the same tokenizer",
                     bench_data_prepare.run),
    "largest": ("Largest model trained here per ZeRO stage (2 workers, bf16, a per-worker memory budget)",
                bench_largest.run),
}
# Scripts that print their own markdown table.
SCRIPTS = {
    "memory": ("ZeRO memory: measured vs estimator vs the 16/N bytes-per-parameter rule", "bench.bench_memory"),
    "tuning": ("Tuning efficiency: ASHA vs random search at 27 trials (eta 3), and campaign overhead per trial",
               "bench.bench_tuning"),
    "data_stream": ("Streaming prepared datasets: worker memory (100 MB vs 2 GB) and data loading's share of step "
                    "time", "bench.bench_data_stream"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", choices=[*IN_PROCESS, *SCRIPTS])
    args = parser.parse_args()
    wanted = args.only or [*IN_PROCESS, *SCRIPTS]
    sections: dict[str, str] = {}
    with Bench() as bench:
        for name in wanted:
            if name in IN_PROCESS:
                title, fn = IN_PROCESS[name]
                try:
                    body = fn(bench)
                except Exception:  # one broken benchmark must not lose the others' figures
                    body = "Failed in this run:\n\n```\n" + traceback.format_exc()[-2000:] + "\n```"
            else:
                title, module = SCRIPTS[name]
                proc = subprocess.run([sys.executable, "-m", module], cwd=REPO, env=bench.env, text=True,
                                      capture_output=True)
                failed = f"Failed in this run:\n\n```\n{proc.stderr[-2000:]}\n```"
                body = proc.stdout.strip() if proc.returncode == 0 else failed
            print(f"## {title}\n\n{body}\n", flush=True)
            sections[name] = (f"## {title}\n\nCommand: `python -m bench.run --only {name}` (run on "
                              f"{dt.date.today().isoformat()})\n\nMachine: {machine()}.\n\n{body}\n")
            write_report(sections)  # after each one: an interrupted run keeps what it measured


def write_report(fresh: dict[str, str]) -> None:
    """Write BENCHMARKS.md; with --only, the other sections keep their figures from the last run."""
    path = REPO / "BENCHMARKS.md"
    previous = _sections(path.read_text()) if path.exists() else {}
    order = [*IN_PROCESS, *SCRIPTS]
    body = "\n".join(fresh.get(name) or previous[name] for name in order if name in fresh or name in previous)
    # Each section names its own machine: `--only gpu` on a GPU node keeps the CPU figures from elsewhere.
    header = "# Benchmarks\n\nFigures from `python -m bench.run`; each section says when and where it ran.\n\n"
    path.write_text(header + body)


def _sections(text: str) -> dict[str, str]:
    """The sections of an existing BENCHMARKS.md by benchmark name (from their `--only NAME` command line)."""
    found = {}
    for chunk in text.split("\n## ")[1:]:
        for name in [*IN_PROCESS, *SCRIPTS]:
            if f"Command: `python -m bench.run --only {name}`" in chunk:
                found[name] = "## " + chunk.rstrip("\n") + "\n"
    return found


if __name__ == "__main__":
    main()
