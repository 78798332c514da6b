"""What the estimator and the metrics code need to know of a model, before it exists. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFacts:
    params: int
    largest_tensor: int  # elements of the biggest single parameter (sizes DeepSpeed's staging buffers)
    flops_per_unit: float  # training FLOPs (forward + backward) per token or per sample
    units_per_micro: int  # tokens or samples in one micro batch
    unit: str  # "tokens" | "samples"


@dataclass(frozen=True)
class ActivationMemory:
    bytes: int  # peak activation memory of one micro batch's forward + backward
    how: str  # how it was counted, shown by `orch estimate`
