"""Size, FLOPs and activation memory of the GPT workload, from its config alone (torch-free)."""

from __future__ import annotations

from orchestrator.workloads.facts import ActivationMemory, ModelFacts
from orchestrator.workloads.gpt.config import GPTModelConfig, flops_per_token, param_count


def model_facts(cfg: GPTModelConfig, micro_batch: int) -> ModelFacts:
    d = cfg.d_model
    largest = max(cfg.vocab_size * d, 4 * d * d, cfg.seq_len * d)
    return ModelFacts(param_count(cfg), largest, float(flops_per_token(cfg)), micro_batch * cfg.seq_len, "tokens")


def activation_memory(cfg: GPTModelConfig, micro: int, bytes_per_element: int,
                      activation_checkpointing: bool) -> ActivationMemory:
    act = bytes_per_element
    tokens = micro * cfg.seq_len
    # Saved for backward per token and layer (pre-LN block): LN in/out x2 (4d), qkv (3d), attention out
    # and its projection input (2d), residual (d), MLP up and GELU out (8d) = ~17d elements, as in
    # Korthikanti et al.'s 34*s*b*h bytes at 2 bytes/element. CPU SDPA keeps only a log-sum-exp; with
    # dropout the math path keeps the T x T probabilities and their mask.
    per_layer = 17 * cfg.d_model * tokens * act
    if cfg.dropout > 0:
        per_layer += micro * cfg.n_head * cfg.seq_len**2 * (act + 1) + 4 * cfg.d_model * tokens
    # Logits in the model dtype, their fp32 copy for the loss (bf16 only) and the saved log-softmax.
    head = tokens * cfg.vocab_size * (act + 4 + (4 if act < 4 else 0)) + 3 * cfg.d_model * tokens * act
    if activation_checkpointing:
        # Block inputs only, plus one block recomputed at a time during backward.
        kept = cfg.n_layer * cfg.d_model * tokens * act + per_layer
        how = "checkpointed: block inputs + one recomputed block"
    else:
        kept = cfg.n_layer * per_layer
        how = f"{cfg.n_layer} layers x ~17*d per token"
    # Backward holds one layer's activation gradients on top of what forward kept.
    return ActivationMemory(kept + per_layer + head, how + f", micro batch {micro} x seq {cfg.seq_len}")
