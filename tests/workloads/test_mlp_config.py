import pytest
from pydantic import ValidationError

from orchestrator.workloads.mlp.config import MLPDataConfig, MLPModelConfig, param_count
from orchestrator.workloads.mlp.model import MLP


def test_unknown_field_is_rejected_by_name():
    with pytest.raises(ValidationError, match="hidden_size"):
        MLPModelConfig(hidden_size=[32])
    with pytest.raises(ValidationError, match="seed"):
        MLPDataConfig(seed=1)


@pytest.mark.parametrize(
    ("cls", "values", "loc"),
    [
        (MLPModelConfig, {"hidden_sizes": [64, 0]}, ("hidden_sizes", 1)),
        (MLPModelConfig, {"activation": "sigmoid"}, ("activation",)),
        (MLPModelConfig, {"dropout": 1.0}, ("dropout",)),
        (MLPDataConfig, {"val_fraction": 0.0}, ("val_fraction",)),
        (MLPDataConfig, {"val_fraction": 1.0}, ("val_fraction",)),
    ],
)
def test_bad_values_name_their_field(cls, values, loc):
    with pytest.raises(ValidationError) as err:
        cls(**values)
    assert err.value.errors()[0]["loc"] == loc


def test_activation_error_lists_the_choices():
    with pytest.raises(ValidationError, match="'relu', 'gelu' or 'tanh'"):
        MLPModelConfig(activation="sigmoid")


@pytest.mark.parametrize("hidden_sizes", [[], [64, 64], [128, 64, 32], [7]])
def test_param_count_matches_the_torch_model(hidden_sizes):
    cfg = MLPModelConfig(hidden_sizes=hidden_sizes)
    assert param_count(cfg) == sum(p.numel() for p in MLP(cfg).parameters())


def test_default_param_count_by_hand():
    assert param_count(MLPModelConfig()) == (64 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10) == 8970
