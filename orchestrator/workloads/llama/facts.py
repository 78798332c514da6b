"""Size, FLOPs and activation memory of the Llama workload, from its config alone (torch-free)."""

from __future__ import annotations

from orchestrator.workloads.facts import ActivationMemory, ModelFacts
from orchestrator.workloads.llama.config import LlamaModelConfig, flops_per_token, param_count


def model_facts(cfg: LlamaModelConfig, micro_batch: int) -> ModelFacts:
    d = cfg.d_model
    largest = max(cfg.vocab_size * d, cfg.inner_size * d, d * d)  # embedding/head, an MLP projection, q/o
    return ModelFacts(param_count(cfg), largest, float(flops_per_token(cfg)), micro_batch * cfg.seq_len, "tokens")


def layer_bytes_per_token(cfg: LlamaModelConfig, act: int) -> int:
    """What one LlamaDecoderLayer's forward keeps for backward, per token, in bytes (measured with
    torch.autograd.graph.saved_tensors_hooks on CPU under SDPA; tests/workloads/test_llama_facts.py checks it).

    Each RMSNorm upcasts its input to fp32 and keeps it (4d) and its normalised output in the model dtype (act*d),
    and the next projection keeps the norm's output (act*d). Attention keeps the rotated q (d) and k (d_kv), v
    (d_kv) and SDPA's output (d), which is already laid out for o_proj; CPU SDPA keeps only a log-sum-exp per head,
    and grouped-query attention runs on the kv heads without repeating them. The SwiGLU MLP keeps gate, silu(gate),
    up and their product (4f). Rotary's cos/sin are shared by all tokens of a layer, and negligible.
    """
    d, kv = cfg.d_model, cfg.n_kv_head * (cfg.d_model // cfg.n_head)
    norms = 2 * (4 * d + 2 * act * d)
    attention = act * (2 * d + 2 * kv) + 4 * cfg.n_head
    mlp = 4 * act * cfg.inner_size
    return norms + attention + mlp + 8  # + the two norms' fp32 rsqrt


def activation_memory(cfg: LlamaModelConfig, micro: int, bytes_per_element: int,
                      activation_checkpointing: bool) -> ActivationMemory:
    act, d, vocab = bytes_per_element, cfg.d_model, cfg.vocab_size
    tokens = micro * cfg.seq_len
    per_layer = layer_bytes_per_token(cfg, act) * tokens
    # The final norm (fp32 input, normalised output, lm_head's input), the logits the loop holds (model dtype),
    # the fp32 log-softmax the loss keeps, and in backward the fp32 gradients of log-softmax and of the logits.
    head = tokens * (4 * d + 2 * act * d + vocab * (act + 4 + 8))
    if activation_checkpointing:
        # Each decoder layer's input only, plus one layer recomputed at a time during backward.
        kept = cfg.n_layer * act * d * tokens + per_layer
        how = "checkpointed: layer inputs + one recomputed layer"
    else:
        kept = cfg.n_layer * per_layer
        how = f"{cfg.n_layer} layers x {layer_bytes_per_token(cfg, act) // d}*d bytes per token"
    # Backward holds one layer's activation gradients on top of what forward kept.
    return ActivationMemory(kept + per_layer + head, how + f", micro batch {micro} x seq {cfg.seq_len}")
