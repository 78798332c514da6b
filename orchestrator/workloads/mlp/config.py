"""MLP workload configuration. Torch-free: the control plane imports it to validate specs and size jobs."""

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

N_FEATURES = 64  # 8x8 pixel intensities, 0..16
N_CLASSES = 10


class MLPModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64, 64],
                                                           description="width of each hidden layer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability in training")
    activation: Literal["relu", "gelu", "tanh"] = Field("relu", description="hidden-layer activation")


class MLPDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of the digits held out for evaluation")
    split_seed: int = Field(0, description="seed of the train/validation split")
    standardize: bool = Field(True, description="scale features by the training split's mean and std")


def param_count(cfg: MLPModelConfig) -> int:
    """Exact parameter count of orchestrator.workloads.mlp.model.MLP(cfg), without building it."""
    sizes = [N_FEATURES, *cfg.hidden_sizes, N_CLASSES]
    return sum(d_in * d_out + d_out for d_in, d_out in pairwise(sizes))
