"""GPT workload configuration. Torch-free: the control plane imports it to validate specs and size jobs."""

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class GPTModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_layer: int = Field(2, gt=0, description="transformer blocks")
    n_head: int = Field(4, gt=0, description="attention heads (must divide d_model)")
    d_model: int = Field(64, gt=0, description="hidden size")
    seq_len: int = Field(64, gt=0, description="tokens per training sequence (context length)")
    vocab_size: int = Field(256, gt=0, description="token ids; 256 is the built-in byte-level tokenizer")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability in training")
    bias: bool = Field(True, description="biases in linear and LayerNorm layers")
    tie_embeddings: bool = Field(True, description="LM head shares the token embedding matrix")

    @model_validator(mode="after")
    def _heads_split_d_model(self) -> "GPTModelConfig":
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        return self


class GPTDataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: the corpus shipped in orchestrator/workloads/gpt/corpus. A path or s3:// URI ending .bin (uint16
    # little-endian token ids, nanoGPT format) or .npy (a 1-D integer array) is one token file, read whole; any
    # other names a dataset `orch data prepare` wrote (orchestrator/core/token_shards.py), streamed in order.
    path: str | None = Field(None, description="prepared dataset (directory or s3:// prefix), or a uint16 .bin or "
                             ".npy token file (path or s3://); default: the bundled corpus")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="tail of a token file held out for evaluation "
                                "(a prepared dataset holds out its val shards)")

    @field_validator("path")
    @classmethod
    def _not_empty(cls, path: str | None) -> str | None:
        if path is not None and not path.strip().rstrip("/"):
            raise ValueError("data.path is empty: name a prepared dataset or a .bin/.npy token file, or leave it "
                             "out for the bundled corpus")
        return path.rstrip("/") if path is not None else None


def param_count(cfg: GPTModelConfig) -> int:
    """Exact parameter count of orchestrator.workloads.gpt.model.GPT(cfg), without building it."""
    d, bias = cfg.d_model, int(cfg.bias)

    def linear(d_in: int, d_out: int) -> int:
        return d_in * d_out + d_out * bias

    layer_norm = d + d * bias
    # ln_1, attention q/k/v and output projection, ln_2, MLP up and down
    block = 2 * layer_norm + linear(d, 3 * d) + linear(d, d) + linear(d, 4 * d) + linear(4 * d, d)
    embeddings = cfg.vocab_size * d + cfg.seq_len * d
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    return embeddings + cfg.n_layer * block + layer_norm + head


def flops_per_token(cfg: GPTModelConfig) -> int:
    """Training FLOPs per token, nanoGPT/PaLM estimate: 6N for the matmuls plus 12*L*d*T for attention.

    N counts the parameters that take part in matmuls, so like nanoGPT it leaves out the position
    embeddings (a lookup) and, when the head is untied, the token embeddings (also a lookup).
    """
    n = param_count(cfg) - cfg.seq_len * cfg.d_model
    if not cfg.tie_embeddings:
        n -= cfg.vocab_size * cfg.d_model
    return 6 * n + 12 * cfg.n_layer * cfg.d_model * cfg.seq_len
