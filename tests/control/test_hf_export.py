"""`orch export --format hf` without Ray: our GPT and a LlamaForCausalLM, built here, written by the export code
from their state dicts and loaded by transformers alone in a fresh process: same logits, same loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orchestrator.control.hf_export import check_exportable, check_out_dir, export_hf, parse_shard_size
from orchestrator.core.errors import OrchError
from tests.control.hf_fresh import load_in_fresh_process


@pytest.fixture(autouse=True)
def llama_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The llama workload's registry entry names its export plan; stand in for it where the entry is absent."""
    from dataclasses import replace

    from orchestrator.workloads import BUILTIN_WORKLOADS

    if "llama" not in BUILTIN_WORKLOADS:
        monkeypatch.setitem(BUILTIN_WORKLOADS, "llama", replace(
            BUILTIN_WORKLOADS["gpt"], name="llama", hf_export="orchestrator.workloads.llama.hf:llama_plan"))


TEXTS = ["hello world", "héllo — 日本語 😀\n\ttabs  ", " leading space"]


def gpt_spec(**model: object) -> dict:
    base = {"n_layer": 2, "n_head": 2, "d_model": 16, "seq_len": 12, "vocab_size": 256}
    return {"workload": "gpt", "model": {**base, **model}, "data": {"path": None}}


def llama_spec(**model: object) -> dict:
    base = {"n_layer": 2, "d_model": 32, "n_head": 4, "n_kv_head": 2, "seq_len": 16, "vocab_size": 256}
    return {"workload": "llama", "model": {**base, **model}, "data": {"path": None}}


def our_gpt(spec: dict) -> torch.nn.Module:
    from orchestrator.workloads.gpt.config import GPTModelConfig
    from orchestrator.workloads.gpt.model import GPT

    torch.manual_seed(0)
    model = GPT(GPTModelConfig(**spec["model"])).eval()
    with torch.no_grad():  # biases and norms away from their 0/1 init, so a mix-up would show in the logits
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def llama(spec: dict) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    from orchestrator.workloads.llama.config import LlamaModelConfig, hf_config_kwargs

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**hf_config_kwargs(LlamaModelConfig(**spec["model"])))).eval()


class Wrapper(torch.nn.Module):  # a workload that holds the transformers model under an attribute
    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm


def consolidated(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What consolidation gives: every key (tied ones too), each tensor its own fp32 copy."""
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def batch(vocab: int, seq: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(1))


def test_gpt_and_llama_exports_load_in_a_fresh_process_with_the_same_logits(tmp_path: Path) -> None:
    cases = {
        "gpt-tied": (gpt_spec(), our_gpt, False),
        "gpt-untied-sharded": (gpt_spec(tie_embeddings=False, dropout=0.1), our_gpt, False),
        "llama-untied": (llama_spec(), llama, False),
        "llama-tied-wrapped": (llama_spec(tie_embeddings=True), llama, True),
    }
    expected, jobs = {}, []
    for name, (spec, build, wrap) in cases.items():
        model = build(spec)
        ids = batch(256, spec["model"]["seq_len"])
        with torch.no_grad():
            logits = model(ids)[0] if name.startswith("gpt") else model(ids).logits
        state = consolidated(Wrapper(model) if wrap else model)
        shard = parse_shard_size("20KB") if "sharded" in name else parse_shard_size("5GB")
        done = export_hf(spec, state, tmp_path / name, shard)
        assert done.shards > 1 if "sharded" in name else done.shards == 1
        expected[str(tmp_path / name)] = logits
        jobs.append({"dir": str(tmp_path / name), "ids": ids.tolist(), "texts": TEXTS})
    assert json.loads((tmp_path / "gpt-untied-sharded" / "model.safetensors.index.json").read_text())["weight_map"]
    assert not (tmp_path / "gpt-tied.partial").exists()
    loaded = load_in_fresh_process(jobs, tmp_path / "fresh")
    for directory, logits in expected.items():
        got = loaded[directory]
        assert got["class"] == ("GPT2LMHeadModel" if Path(directory).name.startswith("gpt") else "LlamaForCausalLM")
        assert torch.allclose(torch.tensor(got["logits"]), logits, atol=1e-5), directory
        # the byte-level tokenizer: ids are the UTF-8 bytes, and decode gives the text back
        assert got["encoded"] == [list(t.encode("utf-8")) for t in TEXTS]
        assert got["decoded"] == TEXTS


def test_gpt2_config_matches_our_model() -> None:
    from orchestrator.workloads.gpt.hf import gpt2_plan

    config = gpt2_plan(gpt_spec(), set(), None).config
    assert (config.n_positions, config.n_embd, config.n_layer, config.n_head) == (12, 16, 2, 2)
    assert config.activation_function == "gelu" and config.layer_norm_epsilon == 1e-5
    assert config.bos_token_id is None and config.eos_token_id is None


def test_prepared_dataset_tokenizer_is_exported(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from orchestrator.core.token_shards import DatasetIndex

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "tokenizer.json").write_text(tok.to_str())
    eos = tok.token_to_id("<|eos|>")
    (dataset / "index.json").write_bytes(DatasetIndex(tok.get_vocab_size(), "<u2", eos, ()).to_json())
    spec = {**gpt_spec(vocab_size=tok.get_vocab_size()), "data": {"path": str(dataset)}}
    model = our_gpt(spec)
    export_hf(spec, consolidated(model), tmp_path / "out")
    ids = batch(tok.get_vocab_size(), 12)
    with torch.no_grad():
        logits = model(ids)[0]
    got = load_in_fresh_process([{"dir": str(tmp_path / "out"), "ids": ids.tolist(), "texts": ["the cat"]}],
                                tmp_path / "fresh")[str(tmp_path / "out")]
    assert torch.allclose(torch.tensor(got["logits"]), logits, atol=1e-5)
    assert got["encoded"] == [tok.encode("the cat").ids] and got["decoded"] == ["the cat"]
    assert (got["eos_token"], got["eos_token_id"]) == ("<|eos|>", eos)


def test_byte_level_tokenizer_matches_the_gpt_workload() -> None:
    from orchestrator.control.hf_tokenizer import byte_level_tokenizer
    from orchestrator.workloads.gpt.data import decode, encode

    tokenizer = byte_level_tokenizer()
    for text in [*TEXTS, "", "\x00\x7f\xff ÿ"]:
        assert tokenizer.encode(text).ids == encode(text)
        assert tokenizer.decode(encode(text)) == decode(encode(text)) == text
    assert tokenizer.get_vocab_size() == 256


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(OrchError, match="model.bias is false"):
        check_exportable(gpt_spec(bias=False))
    with pytest.raises(OrchError, match="causal language models.*'mlp'"):
        check_exportable({"workload": "mlp", "model": {}})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(OrchError, match="not empty"):
        check_out_dir(str(tmp_path / "full"))
    (tmp_path / "file").write_text("keep")
    with pytest.raises(OrchError, match="not a directory"):
        check_out_dir(str(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    assert check_out_dir(str(tmp_path / "empty")) == tmp_path / "empty"
    for bad in ("", "5XB", "-1", "0"):
        with pytest.raises(OrchError, match="--max-shard-size"):
            parse_shard_size(bad)
    assert parse_shard_size("5GB") == 5 * 10**9 and parse_shard_size("2MiB") == 2 * 2**20
    assert parse_shard_size(1000) == 1000


def test_checkpoint_not_matching_the_spec_is_refused_and_nothing_written(tmp_path: Path) -> None:
    spec = gpt_spec()
    state = consolidated(our_gpt(spec))
    del state["blocks.1.attn.c_attn.weight"]
    with pytest.raises(OrchError, match="blocks.1.attn.c_attn.weight"):
        export_hf(spec, state, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prefix_of", [
    lambda k: k,  # LlamaForCausalLM itself
    lambda k: "module." + k,  # a wrapper around it
    lambda k: k.replace("model.", "body.", 1) if k.startswith("model.") else k,  # a wrapper of LlamaModel + head
])
def test_llama_keys_found_through_a_wrapper_prefix(prefix_of) -> None:
    from orchestrator.workloads.llama.hf import llama_plan

    spec = llama_spec()
    plain = llama_plan(spec, set(), None)
    state_keys = {prefix_of(t.name) for t in plain.tensors}
    plan = llama_plan(spec, state_keys, None)
    assert {t.source for t in plan.tensors} == state_keys
    assert all(t.source == prefix_of(t.name) for t in plan.tensors)


def test_a_refusal_while_writing_leaves_nothing(tmp_path: Path) -> None:
    from orchestrator.control.hf_tokenizer import byte_level_tokenizer
    from orchestrator.core.token_shards import DatasetIndex

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "tokenizer.json").write_text(byte_level_tokenizer().to_str())
    (dataset / "index.json").write_bytes(DatasetIndex(256, "<u2", 999, ()).to_json())  # eos_id not in the vocab
    spec = {**gpt_spec(), "data": {"path": str(dataset)}}
    with pytest.raises(OrchError, match="eos_id 999"):
        export_hf(spec, consolidated(our_gpt(spec)), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
