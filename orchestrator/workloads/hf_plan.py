"""What a workload hands `orch export --format hf`: a transformers config and where each tensor comes from.

Torch-free: a plan names tensors of the consolidated state dict, the writer (control/hf_export.py) fetches and
writes them one shard at a time, so the model is never held twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class HFExportError(ValueError):
    """A model config with no Hugging Face equivalent (the message names the field and what to do)."""


@dataclass(frozen=True)
class HFTensor:
    name: str  # the key in the transformers model's state dict
    source: str  # the key in the consolidated state dict
    transpose: bool = False  # GPT-2 keeps its linear weights as Conv1D: (in, out), ours are (out, in)


@dataclass(frozen=True)
class HFPlan:
    config: Any  # a transformers.PretrainedConfig (its model_type picks the class AutoModelForCausalLM builds)
    tensors: tuple[HFTensor, ...]
