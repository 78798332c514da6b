"""Llama workload configuration. Torch- and transformers-free: the control plane validates specs with it.

The model is `transformers.LlamaForCausalLM(LlamaConfig(**hf_config_kwargs(cfg)))`: RMSNorm, rotary position
embeddings, SwiGLU MLP and grouped-query attention, randomly initialised from the config.
"""

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LlamaModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_layer: int = Field(2, gt=0, description="decoder layers")
    d_model: int = Field(64, gt=0, description="hidden size")
    n_head: int = Field(4, gt=0, description="query heads (must divide d_model)")
    n_kv_head: int = Field(2, gt=0, description="key/value heads for grouped-query attention (must divide n_head)")
    d_ff: int | None = Field(None, gt=0, description="SwiGLU inner size; default: 8/3 * d_model rounded up to 64")
    seq_len: int = Field(64, gt=0, description="tokens per training sequence (context length)")
    vocab_size: int = Field(256, gt=0, description="token ids; 256 is the built-in byte-level tokenizer")
    rope_theta: float = Field(10000.0, gt=0, description="rotary embedding base")
    rms_norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon")
    tie_embeddings: bool = Field(False, description="LM head shares the token embedding matrix")

    @model_validator(mode="after")
    def _heads_fit(self) -> "LlamaModelConfig":
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        return self

    @property
    def inner_size(self) -> int:
        return self.d_ff if self.d_ff is not None else -(-8 * self.d_model // 3 // 64) * 64


def hf_config_kwargs(cfg: LlamaModelConfig) -> dict:
    """The `transformers.LlamaConfig` keyword arguments of this model (export writes the same config.json)."""
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.inner_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "max_position_embeddings": cfg.seq_len,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
    }


def param_count(cfg: LlamaModelConfig) -> int:
    """Exact parameter count of LlamaForCausalLM(hf_config_kwargs(cfg)), without building it."""
    d, head_dim = cfg.d_model, cfg.d_model // cfg.n_head
    attention = d * d + 2 * d * cfg.n_kv_head * head_dim + d * d  # q, k, v, o (no biases)
    mlp = 3 * d * cfg.inner_size  # gate, up, down
    block = attention + mlp + 2 * d  # two RMSNorm weights
    embeddings = cfg.vocab_size * d
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    return embeddings + cfg.n_layer * block + d + head


def flops_per_token(cfg: LlamaModelConfig) -> int:
    """Training FLOPs per token: 6N over the matmul parameters (embedding lookup excluded) + 12*L*d*T attention."""
    n = param_count(cfg) - cfg.vocab_size * cfg.d_model * (0 if cfg.tie_embeddings else 1)
    return 6 * n + 12 * cfg.n_layer * cfg.d_model * cfg.seq_len
