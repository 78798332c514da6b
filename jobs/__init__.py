"""Built-in training workloads and the registry the control plane looks them up in.

Importing this package must stay cheap and torch-free: the control plane uses it to validate job specs and
estimate memory, while torch is only imported by the workers that run `entrypoint`.
"""

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from jobs.gpt import config as gpt_config
from jobs.mlp import config as mlp_config


@dataclass(frozen=True)
class Workload:
    name: str
    entrypoint: str  # "module:function", resolved on the worker so that torch stays out of the control plane
    model_config: type[BaseModel]
    data_config: type[BaseModel]
    param_count: Callable[[BaseModel], int]


BUILTIN_WORKLOADS: dict[str, Workload] = {
    "gpt": Workload(
        name="gpt",
        entrypoint="jobs.gpt.train:train",
        model_config=gpt_config.GPTModelConfig,
        data_config=gpt_config.GPTDataConfig,
        param_count=gpt_config.param_count,
    ),
    "mlp": Workload(
        name="mlp",
        entrypoint="jobs.mlp.train:train",
        model_config=mlp_config.MLPModelConfig,
        data_config=mlp_config.MLPDataConfig,
        param_count=mlp_config.param_count,
    ),
}
