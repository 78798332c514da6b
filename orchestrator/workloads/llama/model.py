"""The Llama model: `transformers.LlamaForCausalLM` from our config, random init, SDPA attention, nothing downloaded.

`LlamaLM` holds the Hugging Face model's own `model` (LlamaModel) and `lm_head` modules, so its state dict has
exactly the key names of `LlamaForCausalLM` ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight", ...):
a consolidated checkpoint loads into `LlamaForCausalLM` as it is. Its forward is the training loop's
(idx, targets) -> (logits, loss), like the gpt workload's model.

ZeRO-3 note: under deepspeed.zero.Init every module's parameters are partitioned when that module's __init__
returns, so the `post_init()` weight initialisation of LlamaForCausalLM runs on empty tensors and the shards
keep torch's defaults (N(0, 1) embeddings, Kaiming-uniform linears). `llama_init` therefore initialises each
module again with its parameters gathered, one module at a time, as Llama does: N(0, initializer_range) for
linear and embedding weights, ones for the RMSNorm weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# At import, not inside build_hf_model: the modeling code imports torch._dynamo, whose polyfills check the
# signature of torch.Tensor.__new__, which deepspeed.zero.Init replaces while the model is being built.
from transformers import LlamaConfig, LlamaForCausalLM

from orchestrator.workloads.llama.config import LlamaModelConfig, hf_config_kwargs
from orchestrator.workloads.lm_data import random_token_batches
from orchestrator.workloads.penalties import weight_penalty


def build_hf_model(cfg: LlamaModelConfig) -> nn.Module:
    """LlamaForCausalLM with SDPA attention and random weights (under ZeRO-3's Init: partitioned)."""
    config = LlamaConfig(**hf_config_kwargs(cfg), attn_implementation="sdpa", use_cache=False)
    return LlamaForCausalLM(config)


def llama_init(hf_model: nn.Module) -> None:
    """Llama's initialisation for parameters that ZeRO-3 partitioned before post_init could reach them.

    Each module's own parameters are gathered, initialised on rank 0 and scattered again on leaving the context
    (every rank must call this: the gathers are collective). Parameters that are not partitioned were already
    initialised by post_init and are left alone, so a plain model's RNG use is unchanged.
    """
    import deepspeed

    with torch.no_grad():
        for module in hf_model.modules():
            own = list(module.parameters(recurse=False))
            if not own or not any(hasattr(p, "ds_id") for p in own):
                continue
            with deepspeed.zero.GatheredParameters(own, modifier_rank=0):
                if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
                    hf_model._init_weights(module)


class LlamaLM(nn.Module):
    def __init__(self, cfg: LlamaModelConfig, activation_checkpointing: bool = False, input_noise: float = 0.0,
                 l1: float = 0.0, l2: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.input_noise = input_noise
        self.l1, self.l2 = l1, l2
        hf_model = build_hf_model(cfg)
        if any(hasattr(p, "ds_id") for p in hf_model.parameters()):
            llama_init(hf_model)
        if activation_checkpointing:
            # Non-reentrant: works with inputs that need no grad and with ZeRO-3's parameter hooks; only each
            # decoder layer's input is kept, its activations are recomputed in backward.
            hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.config = hf_model.config
        # Registered under LlamaForCausalLM's own names: the state dict keys are Hugging Face's.
        self.model = hf_model.model
        self.lm_head = hf_model.lm_head

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if idx.size(1) > self.cfg.seq_len:
            raise ValueError(f"sequence of length {idx.size(1)} is longer than model.seq_len={self.cfg.seq_len}")
        x = self.model.embed_tokens(idx)
        if self.training and self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        hidden = self.model(inputs_embeds=x, use_cache=False).last_hidden_state
        logits = self.lm_head(hidden)
        loss = None
        if targets is not None:
            # Cross-entropy in float32: in bf16 the log-softmax over the vocabulary loses precision.
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
            # Inside forward, where the weights are whole (the spec refuses l1/l2 with ZeRO-3). Eval losses stay
            # plain cross-entropy, comparable across runs.
            if self.training and (self.l1 > 0 or self.l2 > 0):
                loss = loss + self.penalty(self.l1, self.l2)
        return logits, loss

    def penalty(self, l1: float, l2: float) -> torch.Tensor:
        """l1 * sum|w| + l2 * sum w^2 over the weight matrices (embeddings, projections, head); norms are not
        penalised. A tied head is counted once."""
        return weight_penalty(self, l1, l2)


def probe_setup(spec: Any) -> tuple[nn.Module, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """A model and a random-batch maker for `orch estimate --probe` (a few timed steps on this machine)."""
    cfg = LlamaModelConfig(**spec.model)
    ds = spec.deepspeed
    model = LlamaLM(cfg, activation_checkpointing=ds.activation_checkpointing)
    return model, random_token_batches(cfg.vocab_size, ds.micro_batch_size, cfg.seq_len)
