"""The L1/L2 weight penalty (train.l1, train.l2) the built-in workloads add to their training loss."""

from __future__ import annotations

import torch
from torch import nn


def weight_penalty(module: nn.Module, l1: float, l2: float) -> torch.Tensor:
    """l1 * sum|w| + l2 * sum w^2 over the weight matrices (linear layers, embeddings, the head): biases and norm
    weights are not penalised, and a tied head is counted once.

    Called inside forward on purpose: under ZeRO a partitioned weight read there is gathered (DeepSpeed registers
    it as an external parameter of the running module); outside forward it is empty."""
    weights = {id(p): p for p in module.parameters() if p.dim() >= 2}.values()
    return l1 * sum(w.abs().sum() for w in weights) + l2 * sum(w.pow(2).sum() for w in weights)
