"""Built-in training workloads and the registry everything else looks them up in.

A workload is one folder: its config (validated at submit), its facts (size, FLOPs, activation memory, the
metrics it reports) and, imported only where torch is wanted, its model, data and training loop. Nothing
outside a workload's folder branches on its name: the estimator, the probe, campaigns and `orch predict`
ask the registry.

Importing this package must stay cheap and torch-free: the control plane uses it to validate job specs and
estimate memory, while torch is only imported by the code behind the "module:function" strings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from orchestrator.workloads.facts import ActivationMemory, ModelFacts
from orchestrator.workloads.gpt import config as gpt_config
from orchestrator.workloads.gpt import facts as gpt_facts
from orchestrator.workloads.llama import config as llama_config
from orchestrator.workloads.llama import facts as llama_facts
from orchestrator.workloads.mlp import config as mlp_config
from orchestrator.workloads.mlp import facts as mlp_facts


@dataclass(frozen=True)
class Workload:
    name: str
    entrypoint: str  # "module:function" train(ctx), resolved on the worker so torch stays out of the control plane
    model_config: type[BaseModel]
    data_config: type[BaseModel]
    model_facts: Callable[[Any, int], ModelFacts]  # (model config, micro batch)
    activation_memory: Callable[[Any, int, int, bool], ActivationMemory]  # (cfg, micro, bytes/elem, ckpt)
    metrics: tuple[str, ...]  # what train() reports at report steps (campaigns check `metric` against it)
    probe: str  # "module:function" (spec) -> (model, batch()) for `orch estimate --probe`; imports torch
    predict: str | None = None  # "module:function" (spec, state dict, features|None) -> result for `orch predict`
    activation_checkpointing: bool = False  # whether deepspeed.activation_checkpointing means anything to it
    runtime_bytes: int = 0  # resident memory its worker-side imports add to a worker's runtime (e.g. transformers)
    # "module:function" (spec, state-dict keys, eos id|None) -> HFPlan for `orch export --format hf` (causal LMs)
    hf_export: str | None = None


def load(entrypoint: str) -> Any:
    """The object a "module:function" string names (imports the module)."""
    module_name, _, attr = entrypoint.partition(":")
    return getattr(importlib.import_module(module_name), attr)


BUILTIN_WORKLOADS: dict[str, Workload] = {
    "gpt": Workload(
        name="gpt",
        entrypoint="orchestrator.workloads.gpt.train:train",
        model_config=gpt_config.GPTModelConfig,
        data_config=gpt_config.GPTDataConfig,
        model_facts=gpt_facts.model_facts,
        activation_memory=gpt_facts.activation_memory,
        metrics=("loss", "eval_loss"),
        probe="orchestrator.workloads.gpt.model:probe_setup",
        activation_checkpointing=True,
        hf_export="orchestrator.workloads.gpt.hf:gpt2_plan",
    ),
    "llama": Workload(
        name="llama",
        entrypoint="orchestrator.workloads.llama.train:train",
        model_config=llama_config.LlamaModelConfig,
        data_config=gpt_config.GPTDataConfig,  # the same token data as gpt
        model_facts=llama_facts.model_facts,
        activation_memory=llama_facts.activation_memory,
        metrics=("loss", "eval_loss"),
        probe="orchestrator.workloads.llama.model:probe_setup",
        activation_checkpointing=True,
        # transformers' modeling code in every worker: the llama example's peak RSS minus the gpt example's.
        runtime_bytes=75 * 2**20,
        hf_export="orchestrator.workloads.llama.hf:llama_plan",
    ),
    "mlp": Workload(
        name="mlp",
        entrypoint="orchestrator.workloads.mlp.train:train",
        model_config=mlp_config.MLPModelConfig,
        data_config=mlp_config.MLPDataConfig,
        model_facts=mlp_facts.model_facts,
        activation_memory=mlp_facts.activation_memory,
        metrics=("loss", "eval_loss", "eval_accuracy"),
        probe="orchestrator.workloads.mlp.model:probe_setup",
        predict="orchestrator.workloads.mlp.predict:predict_for_job",
    ),
}
