import pytest
from pydantic import ValidationError

from orchestrator.workloads.gpt.config import GPTDataConfig, GPTModelConfig, flops_per_token, param_count
from orchestrator.workloads.gpt.model import GPT


def test_unknown_field_is_rejected_by_name():
    with pytest.raises(ValidationError, match="n_layers"):
        GPTModelConfig(n_layers=4)
    with pytest.raises(ValidationError, match="val_frac"):
        GPTDataConfig(val_frac=0.1)


@pytest.mark.parametrize("field", ["n_layer", "n_head", "d_model", "seq_len", "vocab_size"])
@pytest.mark.parametrize("value", [0, -1])
def test_sizes_must_be_positive(field, value):
    with pytest.raises(ValidationError) as err:
        GPTModelConfig(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


def test_d_model_must_split_into_heads():
    with pytest.raises(ValidationError, match=r"d_model \(64\) must be divisible by n_head \(5\)"):
        GPTModelConfig(n_head=5)


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (GPTModelConfig, "dropout", 1.0),
        (GPTModelConfig, "dropout", -0.1),
        (GPTDataConfig, "val_fraction", 0.0),
        (GPTDataConfig, "val_fraction", 1.0),
        (GPTDataConfig, "path", ""),
        (GPTDataConfig, "path", "/"),
    ],
)
def test_bad_values_name_their_field(cls, field, value):
    with pytest.raises(ValidationError) as err:
        cls(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("path", [None, "tokens.bin", "/data/tokens.npy", "s3://bucket/corpus/train.bin"])
def test_token_file_paths(path):
    assert GPTDataConfig(path=path).path == path


@pytest.mark.parametrize(("path", "kept"), [("/data/owt", "/data/owt"), ("s3://bucket/owt/", "s3://bucket/owt"),
                                            ("file:///data/owt", "file:///data/owt")])
def test_prepared_dataset_paths(path, kept):
    assert GPTDataConfig(path=path).path == kept


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_embeddings": False},
        {"bias": False},
        {"n_layer": 3, "n_head": 2, "d_model": 48, "seq_len": 32, "vocab_size": 999, "tie_embeddings": False},
        {"n_layer": 1, "n_head": 1, "d_model": 8, "seq_len": 7, "vocab_size": 11, "bias": False},
    ],
)
def test_param_count_matches_the_torch_model(overrides):
    cfg = GPTModelConfig(**overrides)
    assert param_count(cfg) == sum(p.numel() for p in GPT(cfg).parameters())


def test_default_sizes_by_hand():
    # embeddings 256*64 + 64*64; per block 2 LNs (2*128) + qkv 64*192+192 + proj 64*64+64
    # + up 64*256+256 + down 256*64+64; final LN 128; tied head.
    assert param_count(GPTModelConfig()) == 20480 + 2 * 49984 + 128 == 120576
    # 6 * (N - position embeddings) + 12 * L * d * T
    assert flops_per_token(GPTModelConfig()) == 6 * (120576 - 64 * 64) + 12 * 2 * 64 * 64 == 797184


def test_untying_the_head_does_not_change_flops():
    # The extra parameters are a lookup table: the head matmul costs the same either way.
    assert flops_per_token(GPTModelConfig(tie_embeddings=False)) == flops_per_token(GPTModelConfig())
