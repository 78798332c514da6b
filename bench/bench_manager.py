"""Manager scaling: list/status latency of the real CLI with 1, 100 and 10,000 job records, and submit latency
on a warm cluster with that many records."""

from __future__ import annotations

import statistics
import time

from bench.common import Bench
from orchestrator.control.index import JobIndex, JobRecord
from orchestrator.core.states import JobState

SIZES = (1, 100, 10_000)
REPEATS = 3


def fill(store: JobIndex, count: int, start: int) -> None:
    for i in range(start, count):
        store.insert(JobRecord(id=f"filler-{i:05d}", name="filler", state=JobState.SUCCEEDED,
                               storage_uri="file:///nonexistent", spec={"name": "filler"}))


def cli_seconds(bench: Bench, *args: str) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        bench.orch(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(bench: Bench) -> str:
    store = JobIndex(bench.home / "jobs.db")
    rows, filled = [], 0
    for size in SIZES:
        fill(store, size, filled)
        filled = size
        submit = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            job = bench.submit("jobs/examples/mlp-digits.yaml", "train.steps=1", "train.warmup_steps=0",
                               "checkpoint.at_end=false", "scaling.num_workers=1", wait=False)
            submit.append(time.perf_counter() - start)
            bench.orch("cancel", job, check=False)
        rows.append((size, cli_seconds(bench, "list", "--json"), cli_seconds(bench, "status", "filler-00000", "--json"),
                     statistics.median(submit)))
    base = rows[0]
    lines = ["Median of 3 runs of the real CLI (a fresh Python process each time, ~1 s of it imports).", "",
             "| records | `orch list --json` | `orch status` | `orch submit` (warm cluster) |",
             "| ---: | ---: | ---: | ---: |"]
    for size, list_s, status_s, submit_s in rows:
        lines.append(f"| {size:,} | {list_s:.2f} s ({list_s / base[1]:.2f}x) | {status_s:.2f} s "
                     f"({status_s / base[2]:.2f}x) | {submit_s:.2f} s ({submit_s / base[3]:.2f}x) |")
    return "\n".join(lines)


if __name__ == "__main__":
    with Bench() as b:
        print(run(b))
