"""Estimated vs measured model-state memory per worker, ZeRO 0-3 on 1 and 2 workers, as a markdown table.

Runs real `orch submit` jobs (a few steps each) and reads what each rank measured at its first optimizer
update (workers/rank-XXXXX.json, see orchestrator/runtime/memstats.py), next to orchestrator/core/estimate.py's numbers,
DeepSpeed's own estimator and the 16/N bytes-per-parameter rule; a 4-worker column comes from the estimator.

    python bench/bench_memory.py                       # starts (and stops) its own local Ray cluster
    python bench/bench_memory.py --set model.d_model=128 --address http://127.0.0.1:8265
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.core.estimate import BYTES, DEFAULT_REDUCE_BUCKET, deepspeed_estimate, estimate  # noqa: E402
from orchestrator.core.spec import load_spec_file  # noqa: E402

SPEC = "jobs/examples/gpt-zero3.yaml"
SHORT = ["train.steps=4", "train.warmup_steps=0", "train.eval_every=0", "train.eval_batches=1",
         "checkpoint.every_steps=0", "checkpoint.at_end=false"]
COMPONENTS = ("params", "grads", "master", "optimizer_states")


def orch(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"orch {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def kib(n: float) -> str:
    return f"{n / 1024:,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="spec override for every run")
    parser.add_argument("--address", help="an existing Ray dashboard (default: start a local cluster)")
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="orch-bench-memory-"))
    env = {**os.environ, "ORCH_HOME": str(home), "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp/orch-bench-ray")}
    Path(env["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    if args.address:
        env["ORCH_RAY_ADDRESS"] = args.address
    else:
        orch(env, "cluster", "up", "--idle-stop", "0")
    try:
        rows = []
        for stage in (int(s) for s in args.stages.split(",")):
            for n in (int(w) for w in args.workers.split(",")):
                sets = [*SHORT, *args.set, f"deepspeed.zero_stage={stage}", f"scaling.num_workers={n}",
                        f"name=bench-z{stage}-n{n}"]
                job_id = orch(env, "submit", str(REPO / SPEC), *[a for s in sets for a in ("--set", s)],
                              "--wait").strip().splitlines()[-1]
                rank0 = json.loads((home / "storage" / "jobs" / job_id / "workers" / "rank-00000.json").read_text())
                spec = load_spec_file(REPO / SPEC, sets)
                rows.append((stage, n, spec, rank0["memory"]))
                print(f"ran ZeRO-{stage} on {n} worker(s): {job_id}", file=sys.stderr)
    finally:
        if not args.address:
            orch(env, "cluster", "down", "--cancel")
    print(report(rows))
    return 0


def report(rows: list) -> str:
    spec0 = rows[0][2]
    est0 = estimate(spec0)
    lines = [f"Model: {spec0.workload}, {est0.params:,} parameters, {spec0.deepspeed.precision}, micro batch "
             f"{spec0.deepspeed.micro_batch_size}; KiB per worker (rank 0), estimate / measured at the first "
             "optimizer update.", "",
             "| ZeRO | workers | params | grads | fp32 master | Adam moments | model states | error | 16/N rule "
             "| DeepSpeed estimator (fp16, per GPU) | buffers allocated | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage, n, spec, measured in rows:
        est = estimate(spec)
        cells = [f"{kib(est.component(c))} / {kib(measured[c])}" for c in COMPONENTS]
        error = (measured["model_states"] - est.model_states) / est.model_states
        ds = deepspeed_estimate(est, spec)
        bucket = DEFAULT_REDUCE_BUCKET * BYTES[spec.deepspeed.precision] if stage == 3 else 0
        lines.append(f"| {stage} | {n} | {' | '.join(cells)} | {kib(est.model_states)} / "
                     f"{kib(measured['model_states'])} | {error:+.1%} | {kib(16 * est.params / n)} | "
                     f"{kib(ds['per_gpu_bytes']) if ds else 'n/a'} | {kib(bucket)} / {kib(measured['buffers'])} | "
                     f"{measured['peak_rss'] / 2**20:.0f} |")
    lines += ["", "Simulated from the estimator (not run): model states per worker, KiB.", "",
              "| ZeRO | 1 worker | 2 workers | 4 workers | 16/N rule at 4 |", "|---|---|---|---|---|"]
    for stage in sorted({r[0] for r in rows}):
        spec = next(r[2] for r in rows if r[0] == stage)
        sims = [kib(estimate(spec, num_workers=n).model_states) for n in (1, 2, 4)]
        lines.append(f"| {stage} | {' | '.join(sims)} | {kib(16 * est0.params / 4)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
