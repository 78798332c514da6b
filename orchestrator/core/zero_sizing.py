"""ZeRO buffer sizes derived from the model's shape instead of DeepSpeed's GPU-sized defaults (torch-free).

DeepSpeed's defaults are element counts tuned for multi-GB GPU models, and on a CPU worker several of them
cost more than the model states they serve (bench/zero3_probe.py measures them):

- reduce_bucket_size 5e8: one bucket of 5e8 elements (1 GB in bf16) per worker, more than all the model
  states of an 85M-parameter model;
- stage3_max_live_parameters / stage3_max_reuse_distance 1e9: a parameter reused within 1e9 elements stays
  gathered, and with activation checkpointing every block is reused (recomputed) within one step, so a
  model under ~1e9 parameters can stay whole on every rank;
- sub_group_size 1e9: the optimizer updates the whole partition at once, so the fp32 copy of the gradients
  exists for all of it together (4 bytes per local parameter at the update; 8 more with an unfused AdamW).

Each size here is a small multiple of the largest tensor (the one thing that must fit a bucket whole),
capped where a bigger bucket buys no throughput. A user's `deepspeed.config.zero_optimization` overrides
any of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # spec.py validates through deepspeed_config, which calls this module
    from orchestrator.core.spec import JobSpec

# Above ~16M elements per collective, gloo and NCCL are bandwidth bound: bigger buckets only cost memory.
BUCKET_CAP = 2**24
# DeepSpeed's default persistence threshold: parameters this small stay whole on every rank.
PERSISTENCE_CAP = 100_000


def model_shape(spec: JobSpec) -> tuple[int, int] | None:
    """(parameters, largest tensor) of a built-in workload; None for custom code (size unknown)."""
    from orchestrator.workloads import BUILTIN_WORKLOADS

    workload = BUILTIN_WORKLOADS.get(spec.workload)
    if workload is None:
        return None
    try:
        facts = workload.model_facts(workload.model_config(**spec.model), spec.deepspeed.micro_batch_size)
    except ValueError:  # an invalid model section: the spec's own validation reports it
        return None
    return facts.params, facts.largest_tensor


def zero_sizes(params: int, largest: int, num_workers: int, stage: int) -> dict[str, int]:
    """zero_optimization entries sized from the model (element counts)."""
    bucket = max(largest, min(params, BUCKET_CAP))
    sizes = {"reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if stage == 3:
        local = -(-params // num_workers)
        sizes.update({
            "stage3_prefetch_bucket_size": bucket,
            # Keep biases and norms whole (cheap, saves a collective each); shard every weight matrix.
            "stage3_param_persistence_threshold": min(PERSISTENCE_CAP, max(1, largest // 16)),
            # About two transformer blocks gathered at once (a block is ~3 largest tensors) ...
            "stage3_max_live_parameters": max(6 * largest, bucket),
            # ... and no parameter kept gathered for longer than about one block.
            "stage3_max_reuse_distance": 3 * largest,
            # Optimizer update in slices: fp32 gradients exist for one slice at a time.
            "sub_group_size": max(2 * largest, min(local, BUCKET_CAP)),
        })
    return sizes


def model_sized_zero(spec: JobSpec, world_size: int) -> dict[str, Any]:
    """The model-sized entries for `spec`'s zero_optimization ({} for stage 0 or custom workloads)."""
    stage = spec.deepspeed.zero_stage
    shape = model_shape(spec) if stage > 0 else None
    if shape is None:
        return {}
    return zero_sizes(shape[0], shape[1], world_size, stage)
