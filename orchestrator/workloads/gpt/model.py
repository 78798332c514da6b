"""A compact GPT (nanoGPT-style): pre-LN transformer blocks, causal SDPA attention, tied LM head.

ZeRO-3 note: under deepspeed.zero.Init every module's parameters are partitioned as soon as that module's
__init__ returns, so a parent cannot re-initialise its children's weights afterwards (nanoGPT's
`self.apply(_init_weights)`). Each weight is therefore created with its final initialisation.
"""

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from orchestrator.workloads.gpt.config import GPTModelConfig
from orchestrator.workloads.lm_data import random_token_batches
from orchestrator.workloads.penalties import weight_penalty

INIT_STD = 0.02


def _normal(*shape: int, std: float) -> nn.Parameter:
    return nn.Parameter(nn.init.normal_(torch.empty(*shape), mean=0.0, std=std))


class Linear(nn.Module):
    def __init__(self, d_in: int, d_out: int, bias: bool, std: float = INIT_STD):
        super().__init__()
        self.weight = _normal(d_out, d_in, std=std)
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    def __init__(self, n: int, d: int):
        super().__init__()
        self.weight = _normal(n, d, std=INIT_STD)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTModelConfig, resid_std: float):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = Linear(cfg.d_model, 3 * cfg.d_model, cfg.bias)
        self.c_proj = Linear(cfg.d_model, cfg.d_model, cfg.bias, std=resid_std)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTModelConfig, resid_std: float):
        super().__init__()
        self.c_fc = Linear(cfg.d_model, 4 * cfg.d_model, cfg.bias)
        self.c_proj = Linear(4 * cfg.d_model, cfg.d_model, cfg.bias, std=resid_std)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTModelConfig, resid_std: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, resid_std)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg, resid_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTModelConfig, activation_checkpointing: bool = False, input_noise: float = 0.0,
                 l1: float = 0.0, l2: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        self.input_noise = input_noise
        self.l1, self.l2 = l1, l2
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): each block adds two of them to the
        # residual stream, and this keeps its variance from growing with depth.
        resid_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        self.wte = Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = Embedding(cfg.seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, resid_std) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # The head shares the embedding Parameter object (nanoGPT's weight tying). It stays registered on
            # lm_head too, so ZeRO-3 gathers it when the head runs rather than only inside wte's forward.
            self.lm_head.weight = self.wte.weight

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.size(1)
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of length {T} is longer than model.seq_len={self.cfg.seq_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        if self.training and self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        x = self.drop(x)
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                # Keep only the block inputs; the block's activations are recomputed during backward.
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            # Cross-entropy in float32: in bf16/fp16 the log-softmax over the vocabulary loses precision.
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
            # Training loss only (the spec refuses l1/l2 with ZeRO-3): eval losses stay comparable across runs.
            if self.training and (self.l1 > 0 or self.l2 > 0):
                loss = loss + weight_penalty(self, self.l1, self.l2)
        return logits, loss


def probe_setup(spec: Any) -> tuple[nn.Module, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """A model and a random-batch maker for `orch estimate --probe` (a few timed steps on this machine)."""
    cfg = GPTModelConfig(**spec.model)
    ds = spec.deepspeed
    model = GPT(cfg, activation_checkpointing=ds.activation_checkpointing)
    return model, random_token_batches(cfg.vocab_size, ds.micro_batch_size, cfg.seq_len)
