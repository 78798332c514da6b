"""Our GPT as transformers' GPT2LMHeadModel: the same computation, so `orch export --format hf` maps names only.

Same block (pre-LN, biased linears and LayerNorms with eps 1e-5, exact erf GELU, 4x MLP, softmax scaled by
1/sqrt(head dim), learned positions); GPT-2 stores its linear weights as Conv1D, (in, out), so they are transposed.
"""

from __future__ import annotations

from typing import Any

from orchestrator.workloads.gpt.config import GPTModelConfig
from orchestrator.workloads.hf_plan import HFExportError, HFPlan, HFTensor

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which model.py uses
GELU = "gelu"  # transformers' exact (erf) GELU, F.gelu's default; GPT-2's own "gelu_new" is the tanh approximation


def gpt2_plan(spec: dict[str, Any], state_keys: set[str], eos_id: int | None) -> HFPlan:
    from transformers import GPT2Config

    cfg = GPTModelConfig(**(spec.get("model") or {}))
    if not cfg.bias:
        raise HFExportError("model.bias is false, and GPT-2 has a bias in every linear and LayerNorm layer, so this "
                            "model has no transformers equivalent. Export it with --format pt (or safetensors), or "
                            "train with model.bias: true to export to Hugging Face.")
    config = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=4 * cfg.d_model, activation_function=GELU, layer_norm_epsilon=LAYER_NORM_EPS,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, scale_attn_weights=True,
        tie_word_embeddings=cfg.tie_embeddings, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )
    config.architectures = ["GPT2LMHeadModel"]
    tensors = [HFTensor("transformer.wte.weight", "wte.weight"), HFTensor("transformer.wpe.weight", "wpe.weight")]
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            tensors += [HFTensor(f"{theirs}{norm}.{p}", f"{ours}{norm}.{p}") for p in ("weight", "bias")]
        for linear in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            tensors += [HFTensor(f"{theirs}{linear}.weight", f"{ours}{linear}.weight", transpose=True),
                        HFTensor(f"{theirs}{linear}.bias", f"{ours}{linear}.bias")]
    tensors += [HFTensor("transformer.ln_f.weight", "ln_f.weight"), HFTensor("transformer.ln_f.bias", "ln_f.bias")]
    if not cfg.tie_embeddings:
        tensors.append(HFTensor("lm_head.weight", "lm_head.weight"))
    return HFPlan(config, tuple(_with_prefix(tensors, state_keys)))


def _with_prefix(tensors: list[HFTensor], state_keys: set[str]) -> list[HFTensor]:
    """The sources as the state dict spells them: a wrapper around the model adds one prefix to every key."""
    anchor = "wte.weight"
    prefixes = sorted((k[: -len(anchor)] for k in state_keys if k.endswith(anchor)), key=len)
    prefix = prefixes[0] if prefixes else ""
    return [HFTensor(t.name, prefix + t.source, t.transpose) for t in tensors]
