"""The llama workload's checkpoint as transformers' LlamaForCausalLM: the model IS that class, so only a prefix
(a wrapper module around it) may differ between the consolidated state dict and LlamaForCausalLM's own keys."""

from __future__ import annotations

from typing import Any

from orchestrator.workloads.hf_plan import HFPlan, HFTensor
from orchestrator.workloads.llama.config import LlamaModelConfig, hf_config_kwargs


def llama_plan(spec: dict[str, Any], state_keys: set[str], eos_id: int | None) -> HFPlan:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaModelConfig(**(spec.get("model") or {}))
    config = LlamaConfig(**hf_config_kwargs(cfg), bos_token_id=None, eos_token_id=eos_id, pad_token_id=eos_id)
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):  # the key list only: no memory, no initialisation
        wanted = list(LlamaForCausalLM(config).state_dict())
    if cfg.tie_embeddings:
        wanted = [k for k in wanted if k != "lm_head.weight"]  # saved once, as the embedding
    # Unmatched keys keep their own name: the export then says which tensor the checkpoint lacks.
    sources = match_keys(wanted, state_keys)
    return HFPlan(config, tuple(HFTensor(k, sources.get(k, k)) for k in wanted))


def match_keys(wanted: list[str], state_keys: set[str]) -> dict[str, str]:
    """LlamaForCausalLM key -> state-dict key, through the one prefix rewrite that matches the most keys.

    A wrapper module adds a prefix ("module.", "lm."), and one holding the bare LlamaModel drops "model."; the
    rewrite (strip s, add a) is read off the embedding's key, whatever the wrapper is called."""
    best: dict[str, str] = {}
    for key in state_keys:
        if not key.endswith("embed_tokens.weight"):
            continue
        strip = key[: -len("embed_tokens.weight")]
        for add in ("model.", ""):
            renamed = {w: strip + w[len(add):] for w in wanted if w.startswith(add)}
            found = {w: k for w, k in renamed.items() if k in state_keys}
            if "lm_head.weight" in wanted and "lm_head.weight" not in found:
                # the head sits beside the body in a wrapper: the same prefix less the body's own "model."
                head = [k for k in state_keys if k.endswith("lm_head.weight")]
                if head:
                    found["lm_head.weight"] = min(head, key=len)
            if len(found) > len(best):
                best = found
    return best
