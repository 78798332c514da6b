"""Multi-layer perceptron classifier with an L1/L2 weight penalty."""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.workloads.mlp.config import N_CLASSES, N_FEATURES, MLPModelConfig
from orchestrator.workloads.penalties import weight_penalty

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    def __init__(
        self,
        cfg: MLPModelConfig,
        in_features: int = N_FEATURES,
        n_classes: int = N_CLASSES,
        l1: float = 0.0,
        l2: float = 0.0,
    ):
        super().__init__()
        self.l1, self.l2 = l1, l2
        layers: list[nn.Module] = []
        d_in = in_features
        for d_out in cfg.hidden_sizes:
            layers += [nn.Linear(d_in, d_out), ACTIVATIONS[cfg.activation](), nn.Dropout(cfg.dropout)]
            d_in = d_out
        layers.append(nn.Linear(d_in, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.net(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float(), targets)
            # Inside forward on purpose: under ZeRO-3 a partitioned weight read here is gathered (DeepSpeed
            # registers it as an external parameter of the running module); outside forward it is empty.
            # Eval losses stay plain cross-entropy, comparable across runs.
            if self.training and (self.l1 > 0 or self.l2 > 0):
                loss = loss + self.penalty(self.l1, self.l2)
        return logits, loss

    def penalty(self, l1: float, l2: float) -> torch.Tensor:
        """l1 * sum|w| + l2 * sum w^2 over the weight matrices; biases are not penalised."""
        return weight_penalty(self, l1, l2)


def probe_setup(spec: Any) -> tuple[nn.Module, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """A model and a random-batch maker for `orch estimate --probe` (a few timed steps on this machine)."""
    micro = spec.deepspeed.micro_batch_size
    model = MLP(MLPModelConfig(**spec.model))

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(micro, N_FEATURES), torch.randint(0, N_CLASSES, (micro,))

    return model, batch
