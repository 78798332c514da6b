"""`orch resume JOB --set ...`: what may change when a job continues from its checkpoint, and what follows.

Only how the job is spread over workers may change: the model, data, optimizer and schedule must stay those
the checkpoint holds, or the run would not continue but become another one. A new worker count keeps the
global batch (workers x micro batch x gradient accumulation) when the accumulation steps can absorb it, so the
loss curve continues as if nothing had changed; the checkpoint is resharded for the new count by the workers.
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.errors import SpecError
from orchestrator.core.spec import JobSpec, parse_spec

RESUMABLE = ("scaling.num_workers", "scaling.cpus_per_worker", "scaling.gpus_per_worker",
             "scaling.placement_strategy", "deepspeed.gradient_accumulation_steps")


def resume_spec(stored: dict[str, Any], overrides: list[str], source: str) -> tuple[JobSpec, list[str]]:
    """The spec a resumed job runs with, and notes for the user (what else changed to keep the run the same)."""
    keys = [item.partition("=")[0] for item in overrides]
    for key in keys:
        if key not in RESUMABLE:
            raise SpecError(
                f"--set '{key}' cannot change on resume: the job continues from a checkpoint of that spec. Only "
                f"{', '.join(RESUMABLE)} may change; submit a new job to change anything else.")
    old = parse_spec(stored, source=source)
    new = parse_spec(stored, overrides, source=source)
    notes: list[str] = []
    old_workers, new_workers = old.scaling.num_workers, new.scaling.num_workers
    accum = old.deepspeed.gradient_accumulation_steps
    if new_workers != old_workers and "deepspeed.gradient_accumulation_steps" not in keys:
        micro_batches = old_workers * accum  # per optimizer step, across all workers
        if micro_batches % new_workers == 0:
            new_accum = micro_batches // new_workers
            if new_accum != accum:
                new = parse_spec(stored, [*overrides, f"deepspeed.gradient_accumulation_steps={new_accum}"],
                                 source=source)
                notes.append(f"deepspeed.gradient_accumulation_steps {accum} -> {new_accum}: the global batch stays "
                             f"{micro_batches} micro batches of {old.deepspeed.micro_batch_size} per step")
        else:
            notes.append(f"the global batch changes from {micro_batches} to {new_workers * accum} micro batches per "
                         f"step ({micro_batches} is not a multiple of {new_workers} workers); set "
                         "deepspeed.gradient_accumulation_steps to choose another")
    if new_workers != old_workers:
        notes.append(f"scaling.num_workers {old_workers} -> {new_workers}: the newest checkpoint is resharded for "
                     f"{new_workers} workers when they start")
    return new, notes
