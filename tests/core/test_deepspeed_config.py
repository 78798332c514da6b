import pytest

from orchestrator.core.deepspeed_config import build_deepspeed_config, deep_merge
from orchestrator.core.errors import SpecError
from orchestrator.core.spec import parse_spec

BASE = {"name": "t", "workload": "gpt"}


def _spec(**sections):
    return parse_spec({**BASE, **sections})


def test_derived_config_matches_spec():
    cfg = build_deepspeed_config(_spec(deepspeed={"zero_stage": 3, "precision": "bf16", "micro_batch_size": 4,
                                                  "gradient_accumulation_steps": 2}, scaling={"num_workers": 2}))
    assert cfg["train_batch_size"] == 16
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 2
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is False
    assert zero["reduce_bucket_size"] < 500_000_000  # model-sized, not DeepSpeed's default (orchestrator/zero_sizing)
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"]["enabled"] is False


def test_offload_uses_client_optimizer():
    cfg = build_deepspeed_config(_spec(deepspeed={"zero_stage": 2, "offload_optimizer": True}))
    assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert cfg["zero_force_ds_cpu_optimizer"] is False


def test_raw_config_is_merged_over_derived():
    cfg = build_deepspeed_config(_spec(deepspeed={"config": {"zero_optimization": {"reduce_bucket_size": 1000}}}))
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["zero_optimization"]["reduce_bucket_size"] == 1000


def test_raw_batch_size_that_does_not_divide_is_refused():
    with pytest.raises(SpecError, match=r"train_batch_size \(10\) must equal .* = 16"):
        build_deepspeed_config(_spec(deepspeed={"config": {"train_batch_size": 10}}))


def test_raw_zero_stage_4_is_refused():
    with pytest.raises(SpecError, match="ZeRO stages are 0, 1, 2 and 3"):
        build_deepspeed_config(_spec(deepspeed={"config": {"zero_optimization": {"stage": 4}}}))


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1}}
    assert deep_merge(base, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}
    assert base == {"a": {"b": 1}}


def test_nvme_optimizer_offload_is_refused_with_what_to_use_instead():
    nvme = {"zero_optimization": {"offload_optimizer": {"device": "nvme", "nvme_path": "/local/nvme"}}}
    with pytest.raises(SpecError, match=r"offload_optimizer.device is 'nvme'.*deepspeed.offload_optimizer: true"):
        build_deepspeed_config(_spec(deepspeed={"zero_stage": 3, "config": nvme}))
