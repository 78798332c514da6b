"""Submit-to-first-step latency on a warm local cluster: `orch submit` vs `ray job submit` of an equivalent
hand-written Ray Train + DeepSpeed script (bench/by_hand_train.py)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, Bench, gpt_sets
from orchestrator.control.cluster_address import auth_headers

REPEATS = 3


def orch_latency(bench: Bench) -> float:
    start = time.time()
    job = bench.submit("jobs/examples/gpt-zero3.yaml", *gpt_sets(3, 2, 3, report_every=1), "name=latency",
                       wait=False)
    first = _wait_for(lambda: _first_row_time(bench.job_root(job)))
    bench.orch("cancel", job, check=False)
    return first - start


def by_hand_latency(bench: Bench) -> float:
    marker = Path(bench.home) / f"first-step-{time.time_ns()}.txt"
    url = json.loads((bench.home / "cluster" / "cluster.json").read_text())["dashboard_url"]
    env_vars = {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": bench.env["TORCH_EXTENSIONS_DIR"],
                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    # Ray's CLI sends the cluster's token only in token mode (orch reads the token wherever Ray keeps it).
    cli_env = {**bench.env, "RAY_AUTH_MODE": "token"} if auth_headers() else bench.env
    start = time.time()
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", url, "--no-wait",
                    "--runtime-env-json", json.dumps({"env_vars": env_vars}),
                    "--", sys.executable, "-m", "bench.by_hand_train", str(marker)],
                   cwd=REPO, env=cli_env, check=True, capture_output=True)
    first = _wait_for(lambda: float(marker.read_text()) if marker.exists() and marker.read_text() else None)
    return first - start


def _first_row_time(root: Path) -> float | None:
    path = root / "metrics.jsonl"
    if not path.exists() or not path.read_text().strip():
        return None
    return path.stat().st_mtime  # written right after step 1


def _wait_for(probe, timeout: float = 600.0) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("first step never came")


def run(bench: Bench) -> str:
    orch_s = statistics.median(orch_latency(bench) for _ in range(REPEATS))
    hand_s = statistics.median(by_hand_latency(bench) for _ in range(REPEATS))
    return "\n".join([
        f"Median of {REPEATS}, warm cluster, 2-worker ZeRO-3 GPT, time from the submit command to step 1 done.",
        "",
        "| path | seconds | ratio |",
        "| --- | ---: | ---: |",
        f"| `ray job submit` of a hand-written Ray Train + DeepSpeed script | {hand_s:.1f} | 1.00 |",
        f"| `orch submit` | {orch_s:.1f} | {orch_s / hand_s:.2f} |",
    ])


if __name__ == "__main__":
    with Bench() as b:
        print(run(b))
