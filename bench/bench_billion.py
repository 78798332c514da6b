"""The billion-parameter story through `orch`, as a new user runs it, against a disk-backed S3 server:

    python -m bench.bench_billion [--layers 20] [--steps 12] [--every 4] [--memory-per-worker 10]

1. the same model at ZeRO-0 is refused before launch (with the numbers);
2. `orch submit jobs/examples/gpt-1b-zero3.yaml` (1.01B parameters, ZeRO-3 bf16, 2 workers) with full checkpoints
   (fp32 master weights and Adam moments: ~12 GB) committed to s3rver every `--every` steps;
3. rank 1 is SIGKILLed once the first checkpoint is committed; the job resumes from it and the steps it trains
   again must give the losses the killed attempt logged;
4. `orch export --format hf` of the final checkpoint, its peak memory against the fp32 model's size;
5. transformers alone (a fresh process) scores the job's last eval batches with the export: the job's eval loss.

Needs ~19 GiB of free memory and ~60 GB of free disk (s3rver's objects, the workers' staging, the export), and takes
~45 min on 2 cores. Prints a Markdown report; the raw figures go to --json-out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Bench
from tests.disk_s3 import CREDENTIALS, disk_s3_server
from tests.gpt_eval import gpt_eval_batches

SPEC = "jobs/examples/gpt-1b-zero3.yaml"
BUCKET = "orch"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def set_args(sets: list[str]) -> list[str]:
    return [x for s in sets for x in ("--set", s)]


def read_json(store: Any, key: str) -> Any:
    return json.loads(store.get_bytes(key))


def losses(rows: list[dict[str, Any]]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rows if "loss" in r and not r.get("final")}


def committed(store: Any) -> list[int]:
    from orchestrator.core import checkpoints

    return sorted(c.step for c in checkpoints.list_checkpoints(store) if c.committed)


def state(bench: Bench, job: str, env: dict[str, str]) -> dict[str, Any]:
    return json.loads(bench.orch("status", job, "--json", env=env).stdout)


def wait_until(what: str, predicate: Any, timeout_s: float, poll_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class LowestAvailableMemory:
    """The machine's lowest MemAvailable while it runs: the headroom the job, its forked checkpoint writers and
    the page cache left (a worker's own peak RSS does not show what its copy-on-write child costs)."""

    def __init__(self, period_s: float = 0.5):
        self.period_s, self.lowest = period_s, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> LowestAvailableMemory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.period_s):
            meminfo = Path("/proc/meminfo").read_text().split("\n")
            kib = int(next(line for line in meminfo if line.startswith("MemAvailable:")).split()[1])
            self.lowest = kib * 1024 if self.lowest is None else min(self.lowest, kib * 1024)


def timed_export(bench: Bench, job: str, out: Path, env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of `orch export --format hf`, measured by GNU time."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "maxrss_kib=%M", sys.executable, "-m", "orchestrator", "export",
                           job, "--format", "hf", "--out", str(out)], cwd=REPO, text=True, capture_output=True,
                          env={**bench.env, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"orch export failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    maxrss = int(next(line for line in proc.stderr.splitlines() if line.startswith("maxrss_kib=")).split("=")[1])
    return time.perf_counter() - started, maxrss * 1024


def run(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.core.run import read_metrics, read_spec
    from orchestrator.storage import open_store
    from tests.control.hf_fresh import load_in_fresh_process

    scratch = Path(tempfile.mkdtemp(prefix="orch-billion-", dir=args.scratch))
    figures: dict[str, Any] = {"scratch": str(scratch), "layers": args.layers}
    sets = [f"model.n_layer={args.layers}", f"train.steps={args.steps}", f"checkpoint.every_steps={args.every}",
            "checkpoint.keep_latest=1", "checkpoint.at_end=true", "failure.max_restarts=1",
            f"storage=s3://{BUCKET}/billion", "name=gpt-1b-story"]
    budget = ["--memory-per-worker", str(args.memory_per_worker)]
    with Bench() as bench, disk_s3_server(scratch / "s3", buckets=(BUCKET,)) as (url, _pid):
        env = {"AWS_ENDPOINT_URL": url, **CREDENTIALS}
        os.environ.update(env)
        figures["estimate"] = json.loads(bench.orch("estimate", SPEC, *set_args(sets), "--json").stdout)

        refused = bench.orch("submit", SPEC, *set_args([*sets, "deepspeed.zero_stage=0"]), *budget, check=False,
                             env=env)
        figures["zero0_refusal"] = {"exit": refused.returncode, "message": refused.stderr.strip()[-1500:]}
        if refused.returncode == 0:  # it fits this budget after all: do not let it take the cluster
            bench.orch("cancel", refused.stdout.strip().splitlines()[-1].split()[1], env=env, check=False)
        print(f"ZeRO-0: exit {refused.returncode}: {refused.stderr.strip()[:600]}", file=sys.stderr, flush=True)

        started = time.time()
        memory = LowestAvailableMemory().start()
        job = bench.orch("submit", SPEC, *set_args(sets), *budget, env=env).stdout.strip().splitlines()[-1]
        store = open_store(f"s3://{BUCKET}/billion/jobs/{job}")
        figures["job"] = job
        print(f"submitted {job}", file=sys.stderr, flush=True)

        def first_commit() -> list[int]:
            if state(bench, job, env)["state"] in TERMINAL:
                raise RuntimeError(f"job ended before its first checkpoint: {state(bench, job, env)}")
            return committed(store)

        first = wait_until("the first committed checkpoint", first_commit, args.timeout)[0]
        before_kill = losses(read_metrics(store))
        victim = read_json(store, "workers/rank-00001.json")["pid"]
        os.kill(victim, signal.SIGKILL)
        figures["kill"] = {"after_commit_of": first, "last_logged_step": max(before_kill, default=0),
                           "seconds_after_submit": round(time.time() - started), "losses_before": before_kill}
        print(f"killed rank 1 (pid {victim}) after step {first} committed; logged {sorted(before_kill)}",
              file=sys.stderr, flush=True)

        final_state = wait_until("the job's end", lambda: (s := state(bench, job, env))["state"] in TERMINAL and s,
                                 args.timeout, poll_s=15)
        figures["wall_s"] = round(time.time() - started)
        memory.stop()
        figures["mem_available_min"] = memory.lowest
        figures["state"] = final_state["state"]
        if final_state["state"] != "SUCCEEDED":
            raise RuntimeError(f"job {job} ended {final_state['state']}: {final_state.get('message')}")

        rows = read_metrics(store)
        after = losses(rows)
        attempts = [read_json(store, o.key) for o in store.list("attempts/")]
        restored = max(a.get("restored_step", 0) for a in attempts)
        redone = {s: (before_kill[s], after[s]) for s in before_kill if s > restored and s in after}
        figures.update(
            losses=after, restored_step=restored, redone=redone,
            max_redone_diff=max((abs(a - b) for a, b in redone.values()), default=None),
            ranks=[read_json(store, f"workers/rank-{r:05d}.json") for r in range(2)],
            final=[r for r in rows if r.get("final")][-1],
            step_times=[r.get("step_time_s") for r in rows if "step_time_s" in r],
            stalls=[r["checkpoint_stall_s"] for r in rows if "checkpoint_stall_s" in r],
            saves={r["step"]: {"stall_s": r["checkpoint_stall_s"], "write_s": r.get("checkpoint_write_s")}
                   for r in rows if "checkpoint_stall_s" in r},
            step_time_by_step={r["step"]: r["step_time_s"] for r in rows if r.get("step_time_s")},
            checkpoints={s: sum(o.size for o in store.list(f"checkpoints/step-{s:06d}/")) for s in committed(store)},
            manifests={s: read_json(store, f"checkpoints/step-{s:06d}/MANIFEST.json")["created"]
                       for s in committed(store)},
            row_times={r["step"]: r.get("time") for r in rows if not r.get("final")},
        )
        print(json.dumps({k: figures[k] for k in ("losses", "restored_step", "redone", "stalls", "checkpoints")}),
              flush=True)

        out = scratch / "hf"
        seconds, peak = timed_export(bench, job, out, env)
        figures["export"] = {"seconds": round(seconds), "peak_rss": peak,
                             "files": sorted(p.name for p in out.iterdir())}
        print(f"export: {seconds:.0f} s, peak RSS {peak / 2**30:.2f} GiB", file=sys.stderr, flush=True)

        spec = read_spec(store)
        figures["micro_batch"] = spec["deepspeed"]["micro_batch_size"]
        ids, targets = gpt_eval_batches(spec, args.steps, 2)
        got = load_in_fresh_process([{"dir": str(out), "ids": ids, "targets": targets, "logits": False}],
                                    scratch / "fresh")[str(out)]
        figures["hf_eval"] = {"class": got["class"], "target_loss": got["target_loss"],
                              "job_eval_loss": figures["final"].get("eval_loss")}
        print(json.dumps(figures["hf_eval"]), file=sys.stderr, flush=True)
    return figures


def report(f: dict[str, Any]) -> str:
    est = f["estimate"]
    peaks = [r.get("peak_rss_training", 0) for r in f["ranks"]]
    gib = 2**30
    size = max(f["checkpoints"].values()) if f["checkpoints"] else 0
    steps = sorted(f["losses"])
    errors = ", ".join(f"{(est['total_bytes_per_worker'] - p) / p:+.1%}" for p in peaks)
    zero0 = ("refused before launch" if f["zero0_refusal"]["exit"] else "admitted") + \
        f" (exit {f['zero0_refusal']['exit']})"
    lines = [
        f"GPT, {est['params']:,} parameters (d_model 2048, {f['layers']} layers), ZeRO-3 bf16, 2 Ray Train "
        f"workers (1 CPU each), micro batch {f['micro_batch']} x 128 tokens, activation "
        f"checkpointing; checkpoints to s3rver (objects on disk). Job {f['job']}, {f['wall_s'] / 60:.0f} min submit "
        "to SUCCEEDED, including the kill and resume.",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| ZeRO-0 of the same model | {zero0} |",
        f"| estimate, peak RSS per worker | {est['total_bytes_per_worker'] / gib:.2f} GiB |",
        f"| measured peak RSS per worker (ranks 0, 1) | {' / '.join(f'{p / gib:.2f}' for p in peaks)} GiB "
        f"(estimate error {errors}) |",
        f"| loss step {steps[0]} -> step {steps[-1]} | {f['losses'][steps[0]]:.3f} -> {f['losses'][steps[-1]]:.3f} |",
        f"| seconds per step (median) | {statistics.median([t for t in f['step_times'] if t]):.1f} |"
        if any(f["step_times"]) else "| seconds per step | n/a |",
        f"| checkpoint size | {size / gib:.1f} GiB |",
        "| training stall per checkpoint (step: stall, background write) | "
        + ", ".join(f"{s}: {v['stall_s']:.2f} s, {v['write_s'] or 0:.1f} s" for s, v in sorted(f["saves"].items()))
        + " |",
        "| seconds of the step after each checkpoint (median of all steps) | "
        + ", ".join(f"{s + 1}: {f['step_time_by_step'][s + 1]:.1f}" for s in sorted(f["saves"])
                    if s + 1 in f["step_time_by_step"])
        + f" ({statistics.median(f['step_time_by_step'].values()):.1f}) |",
        f"| lowest MemAvailable of the machine during the job | {(f['mem_available_min'] or 0) / gib:.2f} GiB |",
        f"| killed after commit of step {f['kill']['after_commit_of']}, restored step | {f['restored_step']} |",
        f"| steps trained again, largest loss difference | {len(f['redone'])}, {f['max_redone_diff']} |",
        f"| `orch export --format hf`: time, peak RSS | {f['export']['seconds']} s, "
        f"{f['export']['peak_rss'] / gib:.2f} GiB ({f['export']['peak_rss'] / (4 * est['params']):.2f}x the fp32 "
        "model) |",
        f"| transformers ({f['hf_eval']['class']}) on the job's last eval batches vs the job's eval loss | "
        f"{f['hf_eval']['target_loss']:.4f} vs {f['hf_eval']['job_eval_loss']:.4f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--memory-per-worker", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=7200.0)
    parser.add_argument("--scratch", default=None, help="directory for s3rver's objects and the export")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    figures = run(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2, default=str))
    print(report(figures))


if __name__ == "__main__":
    main()
