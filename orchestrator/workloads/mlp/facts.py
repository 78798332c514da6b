"""Size, FLOPs and activation memory of the MLP workload, from its config alone (torch-free)."""

from __future__ import annotations

from itertools import pairwise

from orchestrator.workloads.facts import ActivationMemory, ModelFacts
from orchestrator.workloads.mlp.config import N_CLASSES, N_FEATURES, MLPModelConfig, param_count


def model_facts(cfg: MLPModelConfig, micro_batch: int) -> ModelFacts:
    params = param_count(cfg)
    sizes = [N_FEATURES, *cfg.hidden_sizes, N_CLASSES]
    largest = max(a * b for a, b in pairwise(sizes))
    return ModelFacts(params, largest, 6.0 * params, micro_batch, "samples")  # forward 2N, backward 4N


def activation_memory(cfg: MLPModelConfig, micro: int, bytes_per_element: int,
                      activation_checkpointing: bool) -> ActivationMemory:
    per_sample = N_FEATURES + sum(3 * h for h in cfg.hidden_sizes) + 3 * N_CLASSES
    return ActivationMemory(2 * micro * per_sample * bytes_per_element,
                            f"micro batch {micro}: inputs, linear/activation/dropout outputs")
