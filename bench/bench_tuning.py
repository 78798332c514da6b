"""ASHA against plain random search (every trial trains its full budget) on the same space and seeds.

    python bench/bench_tuning.py [--campaign jobs/examples/tune-mlp-asha.yaml] [--samples 8] [--seed 7]

Runs both campaigns one after the other through the real `orch tune --wait` (the embedded cluster, or
ORCH_RAY_ADDRESS), with the same search space, seed and trial count, so both sample the same configs.
Prints a markdown table: best metric reached, total training steps spent, trials stopped early, wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def campaign_variants(path: Path, samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """The campaign as given (ASHA) and as random search with full budgets (FIFO): nothing else differs."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data.get("base"), str) and not Path(data["base"]).is_absolute():
        data["base"] = str((path.parent / data["base"]).resolve())
    data.update(num_samples=samples, search={"algorithm": "random", "seed": seed})
    asha = {**data, "name": f"{data['name']}-asha"}
    full = {**data, "name": f"{data['name']}-random", "scheduler": {"type": "fifo"}}
    return {"ASHA": asha, "random search, full budgets": full}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaign", type=Path, default=REPO / "jobs/examples/tune-mlp-asha.yaml")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        for label, spec in campaign_variants(args.campaign, args.samples, args.seed).items():
            print(f"running {label} ...", file=sys.stderr)
            status, wall = run_campaign(spec, Path(tmp))
            best = status.get("best_trial") or {}
            rows.append((label, status, best, wall))
    metric = rows[0][1]["metric"]
    print(f"| strategy | state | trials | stopped early | best {metric} | best trial's steps | total training steps "
          "| steps after stop decisions | wall time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, status, best, wall in rows:
        value = "-" if best.get("value") is None else f"{best['value']:.4f}"
        stopped = sum(t["early_stopped"] for t in status["trials"])
        print(f"| {label} | {status['state']} | {len(status['trials'])} | {stopped} | {value} | "
              f"{best.get('step', '-')} | {status['total_steps']} | {status.get('steps_after_stop', 0)} | "
              f"{wall:.0f} s |")
    asha_steps, full_steps = rows[0][1]["total_steps"], rows[1][1]["total_steps"]
    if full_steps:
        print(f"\nASHA spent {asha_steps / full_steps:.0%} of the training steps of random search with full budgets "
              f"({args.samples} trials, seed {args.seed}, {args.campaign.name}).")
    return 0 if all(status["state"] == "SUCCEEDED" for _, status, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
