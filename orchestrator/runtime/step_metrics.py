"""Training-health numbers added to each metrics report: gradient norm and model FLOPs utilisation (worker side)."""

from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Any

from orchestrator.core.errors import OrchError
from orchestrator.core.estimate import model_facts, peak_flops
from orchestrator.core.spec import JobSpec


def health_metrics(engine: Any, spec: JobSpec, row: dict[str, Any], world_size: int) -> dict[str, float]:
    """grad_norm (the global norm before clipping, where DeepSpeed computes one) and mfu (where the peak is known)."""
    extra: dict[str, float] = {}
    norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
    if norm is not None:
        norm = float(norm)  # a tensor under ZeRO
        if math.isfinite(norm):
            extra["grad_norm"] = norm
    rate = row.get("tokens_per_s", row.get("samples_per_s"))
    peak = peak_flops(_device_name(spec.scaling.use_gpu))
    flops = _flops_per_unit(spec.model_dump_json())
    if rate and peak and flops:
        # Achieved model FLOP/s over the whole job / what all its accelerators could do at peak.
        extra["mfu"] = rate * flops / (peak * world_size)
    return extra


@lru_cache(maxsize=4)
def _flops_per_unit(spec_json: str) -> float | None:
    try:
        return model_facts(JobSpec.model_validate_json(spec_json)).flops_per_unit
    except OrchError:
        return None  # custom workload: size unknown


@lru_cache(maxsize=1)
def _device_name(use_gpu: bool) -> str | None:
    """The accelerator's name, for the peak-FLOPs table; None on CPU (no meaningful peak)."""
    if not use_gpu:
        return None
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


class ThroughputWindow:
    """Steps, samples and tokens since the last report, for rates that are not one noisy step."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.perf_counter()
        self.steps = 0
        self.counts: dict[str, float] = {}
        self.left_out = 0.0  # seconds inside the window that were not training (evaluation)

    def leave_out(self, seconds: float) -> None:
        self.left_out += seconds

    def add(self, metrics: dict[str, float]) -> None:
        self.steps += 1
        for unit in ("tokens", "samples"):
            if unit in metrics:
                self.counts[unit] = self.counts.get(unit, 0.0) + metrics[unit]

    def rates(self, world_size: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.started - self.left_out
        if self.steps == 0 or elapsed <= 0:
            return {}
        rates = {"step_time_s": elapsed / self.steps}
        for unit, count in self.counts.items():
            rates[f"{unit}_per_s"] = count * world_size / elapsed
        return rates
