"""`orch estimate --probe`: time a few real training steps of the job's model on this machine.

Runs in a subprocess (`python -m orchestrator.control.probe`, spec JSON on stdin, result JSON on stdout) so the
CLI never imports torch, with the worker's thread count, and with plain torch AdamW and no DeepSpeed:
it measures compute, not communication, so the job's figure is an upper bound for N workers.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Any

from orchestrator.core.errors import OrchError
from orchestrator.core.spec import JobSpec

PROBE_TIMEOUT_S = 600


def run_probe(spec: JobSpec, steps: int = 3) -> dict[str, Any]:
    """Measured step time on this machine, in a fresh Python process."""
    proc = subprocess.run([sys.executable, "-m", "orchestrator.control.probe", str(steps)],
                          input=spec.model_dump_json(), text=True, capture_output=True, timeout=PROBE_TIMEOUT_S)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OrchError(f"The throughput probe failed: {tail}. Run `orch estimate` without --probe for the "
                        "memory and FLOPs figures alone.")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(spec: JobSpec, steps: int) -> dict[str, Any]:
    import torch

    from orchestrator.core.estimate import builtin_workload, model_facts
    from orchestrator.workloads import load

    torch.manual_seed(0)
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    ds = spec.deepspeed
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[ds.precision]
    facts = model_facts(spec)
    model, make_batch = load(builtin_workload(spec).probe)(spec)

    def batch() -> tuple[Any, Any]:
        x, y = make_batch()
        return (x.to(dtype) if x.is_floating_point() else x), y
    model = model.to(dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        for _ in range(ds.gradient_accumulation_steps):
            _, loss = model(*batch())
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, optimizer state, kernel selection
    started = time.perf_counter()
    for _ in range(steps):
        step()
    step_time = (time.perf_counter() - started) / steps
    per_worker = facts.units_per_micro * ds.gradient_accumulation_steps / step_time
    return {
        "steps_timed": steps, "threads": torch.get_num_threads(), "step_time_s": step_time,
        f"{facts.unit}_per_s_per_worker": per_worker,
        f"{facts.unit}_per_s_job_upper_bound": per_worker * spec.scaling.num_workers,
        "achieved_flops_per_s_per_worker": per_worker * facts.flops_per_unit,
        "params": facts.params, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> int:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    spec = JobSpec.model_validate_json(sys.stdin.read())
    print(json.dumps(measure(spec, steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
