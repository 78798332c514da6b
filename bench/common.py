"""Shared benchmark plumbing: an isolated ORCH_HOME with a warm local cluster, the `orch` CLI, timing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXTENSIONS = Path.home() / ".cache" / "orch-torch-extensions"

# One GPT shape for every throughput figure, so the ratios compare like with like.
GPT_MODEL = {"n_layer": 4, "n_head": 4, "d_model": 128, "seq_len": 128, "vocab_size": 256}
MICRO_BATCH = 16
# GPT-2-small-like non-embedding size (12 x 12 x 768^2 = 84.9M; 85.2M with embeddings): where the orchestration
# overhead figure is taken, as the step is long enough for model compute, not per-step plumbing, to dominate.
GPT_85M = {"n_layer": 12, "n_head": 12, "d_model": 768, "seq_len": 128, "vocab_size": 256}


class Bench:
    """An ORCH_HOME of its own with a warm embedded cluster; stopped on exit."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="orch-bench-"))
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")},
                    "ORCH_HOME": str(self.home), "RAY_TMPDIR": tempfile.mkdtemp(prefix="orch-bray-", dir="/tmp"),
                    "TORCH_EXTENSIONS_DIR": str(EXTENSIONS), "PYTHONUNBUFFERED": "1"}

    def __enter__(self) -> Bench:
        # Warm for the whole run (no idle stop), offering the GPUs torch sees, as the workers will.
        self.orch("cluster", "up", "--idle-stop", "0", "--num-gpus", str(gpu_count()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.orch("cluster", "down", "--cancel", check=False)

    def orch(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, text=True,
                              capture_output=True, env={**self.env, **(env or {})}, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"orch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def submit(self, spec: str, *sets: str, wait: bool = True, env: dict[str, str] | None = None) -> str:
        args = ["submit", spec, *[x for s in sets for x in ("--set", s)], *(["--wait"] if wait else [])]
        return self.orch(*args, env=env).stdout.strip().splitlines()[-1]

    def job_root(self, job_id: str) -> Path:
        return self.home / "storage" / "jobs" / job_id

    def metrics(self, job_id: str, root: Path | None = None) -> list[dict[str, Any]]:
        path = (root or self.job_root(job_id)) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gpt_sets(steps: int, workers: int, stage: int, report_every: int, model: dict[str, int] | None = None,
             micro: int = MICRO_BATCH) -> list[str]:
    sets = [f"model.{k}={v}" for k, v in (model or GPT_MODEL).items()]
    return [*sets, f"train.steps={steps}", f"scaling.num_workers={workers}", f"deepspeed.zero_stage={stage}",
            f"deepspeed.micro_batch_size={micro}", f"train.report_every={report_every}", "train.eval_every=0",
            "checkpoint.every_steps=0", "checkpoint.at_end=false", "train.warmup_steps=0"]


def steady_rate(rows: list[dict[str, Any]], key: str) -> float:
    """Median of the report windows after the first (which includes warm-up)."""
    values = [r[key] for r in rows if key in r and not r.get("final") and r.get("step", 0) > 1]
    return statistics.median(values[1:] if len(values) > 2 else values)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def machine() -> str:
    import deepspeed
    import ray
    import torch

    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpus}, Python "
            f"{platform.python_version()}, torch {torch.__version__}, deepspeed {deepspeed.__version__}, "
            f"ray {ray.__version__}")


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
