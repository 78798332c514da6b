"""The llama model: Llama's initialisation (also under ZeRO-3's partitioned init), training-only input noise and
penalties, Hugging Face key names, checkpointing that changes nothing but memory."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.workloads.llama.config import LlamaModelConfig
from orchestrator.workloads.llama.model import LlamaLM
from tests.paths import REPO_ROOT

CFG = LlamaModelConfig(n_layer=2, d_model=64, n_head=4, n_kv_head=2, seq_len=32, vocab_size=256)
EXTENSIONS = Path(os.environ.get("ORCH_TEST_EXTENSIONS_DIR", Path.home() / ".cache" / "orch-torch-extensions"))


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(CFG.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model() -> LlamaLM:
    torch.manual_seed(0)
    return LlamaLM(CFG)


def test_output_shapes_and_length_limit(model):
    logits, loss = model(tokens(3, 10), tokens(3, 10, seed=1))
    assert logits.shape == (3, 10, CFG.vocab_size) and loss.shape == ()
    assert model(tokens(2, CFG.seq_len))[1] is None
    with pytest.raises(ValueError, match="seq_len"):
        model(tokens(1, CFG.seq_len + 1))


def test_state_dict_keys_are_llama_for_causal_lms(model):
    from transformers import LlamaConfig, LlamaForCausalLM

    from orchestrator.workloads.llama.config import hf_config_kwargs

    reference = LlamaForCausalLM(LlamaConfig(**hf_config_kwargs(CFG)))
    assert list(model.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(model.state_dict())
    model.eval()
    x = tokens(2, CFG.seq_len)
    torch.testing.assert_close(reference(input_ids=x).logits, model(x)[0])


def test_llama_initialisation_and_uniform_initial_loss(model):
    std = model.config.initializer_range
    assert model.model.embed_tokens.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(std, rel=0.1)
    assert torch.equal(model.model.norm.weight, torch.ones(CFG.d_model))
    _, loss = model(tokens(8, CFG.seq_len), tokens(8, CFG.seq_len, seed=1))
    assert loss.item() == pytest.approx(math.log(CFG.vocab_size), abs=0.05)


def test_attention_is_causal(model):
    model.eval()
    idx = tokens(2, CFG.seq_len)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % CFG.vocab_size
    before, after = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(before[:, :10], after[:, :10], rtol=0, atol=0)
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_input_noise_only_in_training():
    torch.manual_seed(0)
    noisy = LlamaLM(CFG, input_noise=0.5)
    plain = copy.deepcopy(noisy)
    plain.input_noise = 0.0
    x, y = tokens(4, CFG.seq_len), tokens(4, CFG.seq_len, seed=1)
    noisy.eval(), plain.eval()
    torch.testing.assert_close(noisy(x, y)[1], plain(x, y)[1], rtol=0, atol=0)
    noisy.train(), plain.train()
    assert not torch.allclose(noisy(x, y)[1], plain(x, y)[1])


def test_penalties_only_in_training_on_weight_matrices():
    torch.manual_seed(0)
    penalised = LlamaLM(CFG.model_copy(update={"tie_embeddings": True}), l1=0.1, l2=0.01)
    plain = copy.deepcopy(penalised)
    plain.l1 = plain.l2 = 0.0
    x, y = tokens(2, CFG.seq_len), tokens(2, CFG.seq_len, seed=1)
    matrices = {id(p): p for p in penalised.parameters() if p.dim() == 2}.values()  # the tied matrix once
    expected = 0.1 * sum(w.abs().sum() for w in matrices) + 0.01 * sum(w.pow(2).sum() for w in matrices)
    torch.testing.assert_close(penalised(x, y)[1] - plain(x, y)[1], expected)
    penalised.eval(), plain.eval()
    torch.testing.assert_close(penalised(x, y)[1], plain(x, y)[1], rtol=0, atol=0)


def test_activation_checkpointing_gives_identical_loss_and_grads():
    torch.manual_seed(0)
    plain = LlamaLM(CFG)
    checkpointed = LlamaLM(CFG, activation_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x, y = tokens(4, CFG.seq_len), tokens(4, CFG.seq_len, seed=1)
    losses = []
    for m in (plain, checkpointed):
        _, loss = m(x, y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-8, msg=name)


# Two gloo ranks build the model under deepspeed.zero.Init, then gather it whole and report what they see.
ZERO3_SCRIPT = r"""
import json, math, os, socket, sys
import torch, torch.multiprocessing as mp

def rank_main(rank, port, tied, out):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_SIZE="2")
    import deepspeed
    from orchestrator.workloads.llama.config import LlamaModelConfig
    from orchestrator.workloads.llama.model import LlamaLM
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = LlamaModelConfig(n_layer=2, d_model=64, n_head=4, n_kv_head=2, seq_len=32, vocab_size=256,
                           tie_embeddings=tied)
    torch.manual_seed(rank)  # different seeds: rank 0's initialisation must be the one every rank keeps
    with deepspeed.zero.Init(config_dict_or_path={"train_micro_batch_size_per_gpu": 1,
                                                  "zero_optimization": {"stage": 3}}):
        model = LlamaLM(cfg)
    local = sum(p.ds_tensor.numel() for p in model.parameters())
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        stds = {n: p.float().std().item() for n, p in model.named_parameters() if p.dim() == 2}
        norms = all(bool(torch.all(p == 1)) for n, p in model.named_parameters() if p.dim() == 1)
        checksum = sum(p.double().sum().item() for p in model.parameters())
        x = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            loss = model(x, torch.roll(x, -1, 1))[1].item()
    out[rank] = {"stds": stds, "norms": norms, "checksum": checksum, "loss": loss, "local": local,
                 "total": sum(p.ds_numel for p in model.parameters())}

if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(rank_main, args=(port, sys.argv[1] == "tied", out), nprocs=2)
    print(json.dumps(dict(out)))
"""


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_zero3_partitioned_init_is_llamas(tmp_path, tied):
    script = tmp_path / "zero3_init.py"
    script.write_text(ZERO3_SCRIPT)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(EXTENSIONS),
           "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "tied" if tied else "untied"], cwd=REPO_ROOT, env=env,
                          text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    first = ranks[0]
    assert first["local"] < first["total"]  # really partitioned across the two ranks
    assert ranks[1]["checksum"] == pytest.approx(first["checksum"], rel=1e-9)  # one model, whatever each seed
    for name, std in first["stds"].items():  # torch's defaults would be N(0, 1) and Kaiming-uniform (~0.07)
        assert std == pytest.approx(0.02, rel=0.1), name
    assert first["norms"]
    assert first["loss"] == pytest.approx(math.log(256), abs=0.05)
