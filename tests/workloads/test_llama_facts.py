"""The activation memory `orch estimate` counts for llama is what the model's forward really keeps."""

import pytest
import torch

from orchestrator.workloads.llama.config import LlamaModelConfig
from orchestrator.workloads.llama.facts import activation_memory, layer_bytes_per_token
from orchestrator.workloads.llama.model import LlamaLM

DTYPES = {4: torch.float32, 2: torch.bfloat16}


def saved_bytes(cfg: LlamaModelConfig, micro: int, act: int, checkpointing: bool) -> int:
    """Bytes autograd keeps from one forward (distinct storages, parameters excluded)."""
    torch.manual_seed(0)
    model = LlamaLM(cfg, activation_checkpointing=checkpointing).to(DTYPES[act]).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randint(0, cfg.vocab_size, (micro, cfg.seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, torch.roll(x, -1, 1))
    return sum(kept.values())


@pytest.mark.parametrize("act", [4, 2], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n_kv_head", [2, 4], ids=["gqa", "mha"])
def test_layer_count_matches_what_autograd_saves(act, n_kv_head):
    micro = 2
    shallow = LlamaModelConfig(n_layer=1, d_model=128, n_head=4, n_kv_head=n_kv_head, seq_len=64, vocab_size=320)
    deep = shallow.model_copy(update={"n_layer": 3})
    per_layer = (saved_bytes(deep, micro, act, False) - saved_bytes(shallow, micro, act, False)) / 2
    tokens = micro * shallow.seq_len
    assert per_layer == pytest.approx(layer_bytes_per_token(shallow, act) * tokens, rel=0.02)
    # With checkpointing each layer keeps only its input, in the model dtype.
    per_layer_ckpt = (saved_bytes(deep, micro, act, True) - saved_bytes(shallow, micro, act, True)) / 2
    assert per_layer_ckpt == pytest.approx(act * shallow.d_model * tokens, rel=0.02)


@pytest.mark.parametrize("act", [4, 2], ids=["fp32", "bf16"])
def test_estimate_covers_what_forward_keeps(act):
    cfg = LlamaModelConfig(n_layer=2, d_model=128, n_head=4, n_kv_head=2, seq_len=64, vocab_size=320)
    kept = saved_bytes(cfg, 2, act, False)
    estimated = activation_memory(cfg, 2, act, False).bytes
    # The estimate adds backward's transients (one layer's gradients, the logits' gradients) on top.
    assert kept < estimated < 2 * kept
    # Checkpointed: layer inputs, plus one layer recomputed in backward (with its gradients).
    per_layer = layer_bytes_per_token(cfg, act) * 2 * cfg.seq_len
    checkpointed = activation_memory(cfg, 2, act, True).bytes
    assert saved_bytes(cfg, 2, act, True) + per_layer < checkpointed < estimated
