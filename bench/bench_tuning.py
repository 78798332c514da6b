"""ASHA against plain random search (every trial trains its full budget) on the same space and seeds.

    python -m bench.bench_tuning [--samples 27] [--eta 3] [--grace 10] [--steps 270] [--seeds 7 8 9]
                                 [--launch-trials 27]

For each seed, runs both campaigns one after the other through the real `orch tune --wait` (the embedded
cluster, or ORCH_RAY_ADDRESS), with the same search space (jobs/examples/tune-mlp-asha.yaml's), seed and trial
count, so both sample the same configs. ASHA judges every `--grace` x eta^k steps up to `--steps`.
Prints a markdown table per seed (best metric, total training steps, trials stopped early, wall time, campaign
overhead per trial) and the medians over seeds of ASHA's share of the steps and of its best metric's gap.

Campaign overhead per trial = campaign wall time x concurrent trials / trials, minus a trial's mean training
time (the sum of its reported step times over the steps it trained): what starting, judging and ending a trial
costs beyond its training steps.

First, the same overhead with trials started both ways (`--launch-trials` trials of random search, 30 steps each,
0 to skip): a Ray Train worker group per trial (`trial_resources.launch: worker_group`, the "before") against
single-worker trials trained in their own Tune process (the default, the "after").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def campaign_variants(path: Path, samples: int, seed: int, eta: float, grace: int,
                      steps: int) -> dict[str, dict[str, Any]]:
    """The campaign under ASHA and as random search with full budgets (FIFO): nothing else differs."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data.get("base"), str) and not Path(data["base"]).is_absolute():
        data["base"] = str((path.parent / data["base"]).resolve())
    # Reports and evals at every rung step; one checkpoint, at the end (the best trial's model is kept).
    data["overrides"] = {**data.get("overrides", {}), "train.steps": steps, "train.warmup_steps": min(grace, 10),
                         "train.report_every": grace, "train.eval_every": grace, "checkpoint.every_steps": steps}
    data.update(num_samples=samples, search={"algorithm": "random", "seed": seed})
    asha = {**data, "name": f"{data['name']}-asha-{seed}",
            "scheduler": {"type": "asha", "grace_period": grace, "reduction_factor": eta}}
    full = {**data, "name": f"{data['name']}-random-{seed}", "scheduler": {"type": "fifo"}}
    return {"ASHA": asha, "random search, full budgets": full}


def launch_variants(path: Path, trials: int, steps: int = 30) -> dict[str, dict[str, Any]]:
    """A short random search, its trials started as worker groups and in their Tune processes: nothing else differs."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data.get("base"), str) and not Path(data["base"]).is_absolute():
        data["base"] = str((path.parent / data["base"]).resolve())
    data["overrides"] = {**data.get("overrides", {}), "train.steps": steps, "train.warmup_steps": 5,
                         "train.report_every": 10, "train.eval_every": steps, "checkpoint.every_steps": steps}
    data.update(num_samples=trials, search={"algorithm": "random", "seed": 7}, scheduler={"type": "fifo"})
    variants = {}
    for label, launch in (("worker group per trial (before)", "worker_group"), ("in the Tune process (after)", "auto")):
        resources = {**data.get("trial_resources", {}), "launch": launch}
        variants[label] = {**data, "name": f"{data['name']}-{launch.replace('_', '-')}", "trial_resources": resources}
    return variants


def compare_launches(campaign: Path, trials: int, concurrency: int) -> bool:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        for label, spec in launch_variants(campaign, trials).items():
            spec["max_concurrent_trials"] = concurrency
            print(f"launch comparison: running {label} ...", file=sys.stderr, flush=True)
            status, wall = run_campaign(spec, Path(tmp))
            rows.append((label, status, wall, overhead_per_trial(status, wall, concurrency)))
    print(f"\nCampaign overhead by how trials start: {trials} trials of random search, 30 steps each, "
          f"{concurrency} at a time:\n")
    print("| trials start | state | trials | wall time | training per trial | overhead per trial |")
    print("|---|---|---|---|---|---|")
    for label, status, wall, overhead in rows:
        train = statistics.mean(training_seconds(t["store_uri"]) for t in status["trials"])
        print(f"| {label} | {status['state']} | {len(status['trials'])} | {wall:.0f} s | {train:.1f} s | "
              f"{overhead:.1f} s |", flush=True)
    before, after = rows[0][3], rows[1][3]
    print(f"\nOverhead per trial in the Tune process: {after:.1f} s, {after / before:.2f} of a worker group's "
          f"{before:.1f} s (target <= 3 s).", flush=True)
    return all(status["state"] == "SUCCEEDED" for _, status, _, _ in rows)


def run_campaign(spec: dict[str, Any], workdir: Path) -> tuple[dict[str, Any], float]:
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "tune", str(path), "--wait"], cwd=REPO,
                          text=True, capture_output=True)
    wall = time.monotonic() - started
    if not proc.stdout.strip():
        sys.exit(f"orch tune failed:\n{proc.stderr}")
    campaign_id = proc.stdout.strip().splitlines()[-1]
    status = subprocess.run([sys.executable, "-m", "orchestrator", "status", campaign_id, "--json"], cwd=REPO,
                            text=True, capture_output=True, check=True)
    return json.loads(status.stdout), wall


def training_seconds(store_uri: str) -> float:
    """The time a trial spent in training steps: each report's mean step time x the steps it covers."""
    from orchestrator.core.run import read_metrics
    from orchestrator.storage import open_store

    total, previous = 0.0, 0
    for row in read_metrics(open_store(store_uri)):
        if row.get("final") or "step_time_s" not in row:
            continue
        step = int(row["step"])
        total += float(row["step_time_s"]) * max(step - previous, 0)
        previous = max(previous, step)
    return total


def overhead_per_trial(status: dict[str, Any], wall: float, concurrency: int) -> float:
    trials = status["trials"]
    train = statistics.mean(training_seconds(t["store_uri"]) for t in trials)
    return wall * concurrency / len(trials) - train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaign", type=Path, default=REPO / "jobs/examples/tune-mlp-asha.yaml")
    parser.add_argument("--samples", type=int, default=27)
    parser.add_argument("--eta", type=float, default=3.0)
    parser.add_argument("--grace", type=int, default=10, help="first rung, in steps")
    parser.add_argument("--steps", type=int, default=270, help="every trial's full budget, in steps")
    parser.add_argument("--seeds", type=int, nargs="*", default=[7, 8, 9])
    parser.add_argument("--concurrency", type=int, default=2, help="trials at a time (the cluster's CPUs)")
    parser.add_argument("--launch-trials", type=int, default=27,
                        help="trials of the worker-group vs in-process comparison (0: skip it)")
    args = parser.parse_args(argv)
    shares, gaps = [], []
    ok = compare_launches(args.campaign, args.launch_trials, args.concurrency) if args.launch_trials else True
    for seed in args.seeds:
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
            for label, spec in campaign_variants(args.campaign, args.samples, seed, args.eta, args.grace,
                                                 args.steps).items():
                spec["max_concurrent_trials"] = args.concurrency
                print(f"seed {seed}: running {label} ...", file=sys.stderr, flush=True)
                status, wall = run_campaign(spec, Path(tmp))
                rows.append((label, status, status.get("best_trial") or {}, wall))
        metric = rows[0][1]["metric"]
        print(f"\nSeed {seed}, {args.samples} trials, eta {args.eta:g}, rungs from {args.grace} to {args.steps} steps, "
              f"{args.concurrency} trials at a time:\n")
        print(f"| strategy | state | trials | stopped early | best {metric} | best trial's steps "
              "| total training steps | steps after stop decisions | wall time | overhead per trial |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, status, best, wall in rows:
            value = "-" if best.get("value") is None else f"{best['value']:.4f}"
            stopped = sum(t["early_stopped"] for t in status["trials"])
            overhead = overhead_per_trial(status, wall, args.concurrency)
            print(f"| {label} | {status['state']} | {len(status['trials'])} | {stopped} | {value} | "
                  f"{best.get('step', '-')} | {status['total_steps']} | {status.get('steps_after_stop', 0)} | "
                  f"{wall:.0f} s | {overhead:.1f} s |", flush=True)
        ok = ok and all(status["state"] == "SUCCEEDED" for _, status, _, _ in rows)
        asha, full = rows[0], rows[1]
        if full[1]["total_steps"] and asha[2].get("value") is not None and full[2].get("value") is not None:
            shares.append(asha[1]["total_steps"] / full[1]["total_steps"])
            gaps.append(full[2]["value"] - asha[2]["value"] if rows[0][1]["mode"] == "max"
                        else asha[2]["value"] - full[2]["value"])
            print(f"\nASHA spent {shares[-1]:.1%} of the training steps of random search with full budgets; its best "
                  f"{metric} is {gaps[-1]:+.4f} behind random's.", flush=True)
    if shares:
        print(f"\nMedian over {len(shares)} seed(s) ({', '.join(map(str, args.seeds))}): ASHA spent "
              f"{statistics.median(shares):.1%} of random search's training steps (target <= 33.3%), best "
              f"{rows[0][1]['metric']} {statistics.median(gaps):+.4f} behind random's (target <= 0.01).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
