"""The llama config's exact counts match the transformers model it describes."""

import pytest

from orchestrator.workloads.llama.config import LlamaModelConfig, flops_per_token, param_count
from orchestrator.workloads.llama.facts import model_facts
from orchestrator.workloads.llama.model import LlamaLM

CONFIGS = {
    "default (GQA 4/2)": {},
    "tied embeddings": {"tie_embeddings": True},
    "multi-head (no GQA)": {"n_kv_head": 4},
    "multi-query, odd d_ff": {"n_kv_head": 1, "d_ff": 100},
    "deeper, wider vocab": {"n_layer": 3, "d_model": 96, "n_head": 6, "n_kv_head": 3, "vocab_size": 1000},
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_param_count_and_largest_tensor_are_the_real_models(overrides):
    cfg = LlamaModelConfig(**overrides)
    model = LlamaLM(cfg)
    params = list(model.parameters())  # a tied head is one Parameter, counted once
    assert param_count(cfg) == sum(p.numel() for p in params)
    facts = model_facts(cfg, micro_batch=3)
    assert facts.params == param_count(cfg)
    assert facts.largest_tensor == max(p.numel() for p in params)
    assert facts.units_per_micro == 3 * cfg.seq_len and facts.unit == "tokens"


def test_flops_are_6n_over_matmul_parameters_plus_attention():
    cfg = LlamaModelConfig(d_model=64, n_layer=2, vocab_size=256, seq_len=64)
    attention = 12 * 2 * 64 * 64
    # Untied: the embedding is a lookup, not a matmul; the head is one.
    assert flops_per_token(cfg) == 6 * (param_count(cfg) - 256 * 64) + attention
    tied = cfg.model_copy(update={"tie_embeddings": True})
    assert flops_per_token(tied) == 6 * param_count(tied) + attention  # the shared matrix is the head's matmul


def test_default_ffn_is_eight_thirds_rounded_up_to_64():
    assert LlamaModelConfig(d_model=64).inner_size == 192
    assert LlamaModelConfig(d_model=256, n_head=4).inner_size == 704
    assert LlamaModelConfig(d_model=64, d_ff=100).inner_size == 100
