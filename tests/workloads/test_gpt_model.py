import copy
import math

import pytest
import torch

from orchestrator.workloads.gpt.config import GPTModelConfig
from orchestrator.workloads.gpt.generate import generate
from orchestrator.workloads.gpt.model import GPT

CFG = GPTModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, vocab_size=256)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG)


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(CFG.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_output_shapes(model):
    logits, loss = model(tokens(3, 10), tokens(3, 10, seed=1))
    assert logits.shape == (3, 10, CFG.vocab_size)
    assert loss.shape == ()
    logits, loss = model(tokens(2, CFG.seq_len))
    assert logits.shape == (2, CFG.seq_len, CFG.vocab_size) and loss is None


def test_longer_than_seq_len_is_rejected(model):
    with pytest.raises(ValueError, match="seq_len"):
        model(tokens(1, CFG.seq_len + 1))


def test_attention_is_causal(model):
    model.eval()
    idx = tokens(2, CFG.seq_len)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % CFG.vocab_size
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :10], after[:, :10], rtol=0, atol=0)
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_initial_loss_is_uniform_over_the_vocabulary(model):
    _, loss = model(tokens(8, CFG.seq_len), tokens(8, CFG.seq_len, seed=1))
    assert loss.item() == pytest.approx(math.log(CFG.vocab_size), abs=0.05)


def test_nanogpt_initialisation(model):
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    # Residual projections are scaled down by 1/sqrt(2 * n_layer).
    assert model.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.1)
    assert torch.count_nonzero(model.blocks[0].attn.c_attn.bias) == 0


def test_embeddings_are_tied_only_when_asked(model):
    assert model.lm_head.weight is model.wte.weight
    untied = GPT(CFG.model_copy(update={"tie_embeddings": False}))
    assert untied.lm_head.weight is not untied.wte.weight


def test_activation_checkpointing_gives_identical_loss_and_grads():
    torch.manual_seed(0)
    plain = GPT(CFG.model_copy(update={"dropout": 0.1}))  # dropout: recomputation must replay the same RNG
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing = True
    x, y = tokens(4, CFG.seq_len), tokens(4, CFG.seq_len, seed=1)
    losses = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        _, loss = model(x, y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-8, msg=name)


def test_input_noise_applies_in_training_only(model):
    noisy = copy.deepcopy(model)
    noisy.input_noise = 0.5
    x, y = tokens(4, CFG.seq_len), tokens(4, CFG.seq_len, seed=1)
    assert noisy(x, y)[1].item() != model(x, y)[1].item()
    model.eval()
    noisy.eval()
    torch.testing.assert_close(noisy(x)[0], model(x)[0], rtol=0, atol=0)


def test_generate_appends_the_requested_tokens(model):
    prompt = tokens(2, 5)
    out = generate(model, prompt, max_new_tokens=7, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 12) and out.dtype == torch.int64
    assert torch.equal(out[:, :5], prompt)
    assert model.training  # generation restores the caller's mode


def test_generate_beyond_the_context_window(model):
    out = generate(model, tokens(1, CFG.seq_len), max_new_tokens=CFG.seq_len + 3, temperature=0.0)
    assert out.shape == (1, 2 * CFG.seq_len + 3)


def test_generation_is_reproducible(model):
    prompt = tokens(1, 4)
    greedy = [generate(model, prompt, 10, temperature=0.0) for _ in range(2)]
    assert torch.equal(*greedy)
    sampled = [generate(model, prompt, 10, 1.0, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*sampled)


def test_l1_l2_penalty_is_added_to_the_training_loss_only():
    torch.manual_seed(0)
    cfg = GPTModelConfig(n_layer=1, n_head=2, d_model=16, seq_len=8, vocab_size=32)
    plain, penalised = GPT(cfg), GPT(cfg, l1=1e-3, l2=1e-2)
    penalised.load_state_dict(plain.state_dict())
    x = torch.randint(0, 32, (2, 8))
    # Weight matrices once each (the tied head is the embedding); biases and LayerNorm weights are not penalised.
    matrices = [plain.wte.weight, plain.wpe.weight] + [p for n, p in plain.blocks.named_parameters()
                                                       if n.endswith("weight") and p.dim() == 2]
    expected = 1e-3 * sum(w.abs().sum() for w in matrices) + 1e-2 * sum(w.pow(2).sum() for w in matrices)
    _, base = plain(x, x)
    _, with_penalty = penalised(x, x)
    assert with_penalty.item() == pytest.approx(base.item() + expected.item(), rel=1e-6)
    plain.eval()
    penalised.eval()
    assert penalised(x, x)[1].item() == pytest.approx(plain(x, x)[1].item(), abs=0)
