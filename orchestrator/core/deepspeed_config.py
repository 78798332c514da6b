"""Derive a DeepSpeed config from a job spec (pure data; no torch or deepspeed import here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.core.errors import SpecError

if TYPE_CHECKING:  # spec.py calls this module to validate the merged config, so no runtime import back
    from orchestrator.core.spec import JobSpec
from orchestrator.core.zero_sizing import model_sized_zero


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_deepspeed_config(spec: JobSpec, world_size: int | None = None) -> dict[str, Any]:
    ds = spec.deepspeed
    world_size = world_size or spec.scaling.num_workers
    zero: dict[str, Any] = {"stage": ds.zero_stage, **model_sized_zero(spec, world_size)}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": spec.scaling.use_gpu}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": spec.scaling.use_gpu}
    if ds.zero_stage == 3:
        # Shards are saved per rank; `orch export` consolidates them offline, so no gather at save time.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": ds.micro_batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "train_batch_size": ds.micro_batch_size * ds.gradient_accumulation_steps * world_size,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,  # we report metrics ourselves
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:
        # We pass torch's AdamW as the client optimizer (DeepSpeed's CPU Adam needs a ~50 s JIT build).
        config["zero_force_ds_cpu_optimizer"] = False
    merged = deep_merge(config, ds.config)
    _check_batch_arithmetic(merged, world_size)
    return merged


def _check_batch_arithmetic(config: dict[str, Any], world_size: int) -> None:
    """DeepSpeed asserts this deep inside initialize(); we say it at submit time, with the fix."""
    micro = config.get("train_micro_batch_size_per_gpu")
    gas = config.get("gradient_accumulation_steps")
    total = config.get("train_batch_size")
    if not all(isinstance(v, int) and v > 0 for v in (micro, gas, total)):
        raise SpecError("deepspeed.config: train_batch_size, train_micro_batch_size_per_gpu and "
                        "gradient_accumulation_steps must be positive integers.")
    if micro * gas * world_size != total:
        raise SpecError(
            f"deepspeed.config: train_batch_size ({total}) must equal train_micro_batch_size_per_gpu ({micro}) x "
            f"gradient_accumulation_steps ({gas}) x workers ({world_size}) = {micro * gas * world_size}. "
            "Set deepspeed.micro_batch_size / gradient_accumulation_steps instead of raw batch sizes."
        )
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise SpecError(f"deepspeed.config.zero_optimization.stage is {stage}; ZeRO stages are 0, 1, 2 and 3.")
    offload = config.get("zero_optimization", {}).get("offload_optimizer")
    if isinstance(offload, dict) and offload.get("device") == "nvme":
        # Measured with DeepSpeed 0.19.8 (BENCHMARKS.md, largest model per ZeRO stage): its NVMe load path copies
        # back only the optimizer's swap files, and the resumed model scores like an untrained one.
        raise SpecError(
            "deepspeed.config.zero_optimization.offload_optimizer.device is 'nvme': DeepSpeed resumes such a "
            "checkpoint without its trained weights, so the job could not resume where it stopped. Use "
            "deepspeed.offload_optimizer: true (optimizer states in host memory), ZeRO-3, or more workers; "
            "`orch estimate` says what fits."
        )
