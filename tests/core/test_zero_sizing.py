"""ZeRO buffer sizes follow the model, and the user's raw DeepSpeed config still wins."""

from __future__ import annotations

from orchestrator.core.deepspeed_config import build_deepspeed_config
from orchestrator.core.spec import parse_spec
from orchestrator.core.zero_sizing import BUCKET_CAP, model_sized_zero, zero_sizes
from orchestrator.workloads.gpt.config import GPTModelConfig, param_count

GPT_1B = {"n_layer": 20, "n_head": 16, "d_model": 2048, "seq_len": 128, "vocab_size": 256}


def _spec(stage: int, model: dict | None = None, workload: str = "gpt", **deepspeed):
    return parse_spec({"name": "t", "workload": workload, "model": model if model is not None else GPT_1B,
                       "scaling": {"num_workers": 2},
                       "deepspeed": {"zero_stage": stage, "precision": "bf16", "micro_batch_size": 1, **deepspeed}})


def test_billion_parameter_gpt_gets_buffers_of_a_few_tensors_not_defaults():
    zero = build_deepspeed_config(_spec(3))["zero_optimization"]
    largest = 4 * 2048 * 2048  # the MLP matrices
    assert param_count(GPTModelConfig(**GPT_1B)) > 1_000_000_000
    assert zero["reduce_bucket_size"] == zero["stage3_prefetch_bucket_size"] == largest  # 32 MiB in bf16, not 1 GB
    assert zero["stage3_max_live_parameters"] == 6 * largest  # ~2 blocks gathered, not up to 1e9 elements
    assert zero["stage3_max_reuse_distance"] == 3 * largest
    assert zero["sub_group_size"] == 2 * largest  # fp32 grads + AdamW temporaries for 1/15 of the partition
    assert zero["stage3_param_persistence_threshold"] == 100_000  # biases and norms stay whole


def test_small_model_shards_its_weights_and_updates_in_one_group():
    model = {"n_layer": 2, "n_head": 4, "d_model": 64, "seq_len": 64}
    params = param_count(GPTModelConfig(**model))
    zero = model_sized_zero(_spec(3, model), 2)
    # DeepSpeed's default threshold (1e5) would keep every tensor of this model whole on every rank.
    assert zero["stage3_param_persistence_threshold"] == 4 * 64 * 64 // 16
    assert zero["reduce_bucket_size"] == params  # the whole model in one bucket: still tiny
    assert zero["sub_group_size"] == -(-params // 2)  # the local partition is one sub group


def test_caps_and_floors():
    huge = zero_sizes(params=10**11, largest=2**20, num_workers=8, stage=3)
    assert huge["reduce_bucket_size"] == BUCKET_CAP and huge["sub_group_size"] == BUCKET_CAP
    wide = zero_sizes(params=10**9, largest=2**26, num_workers=2, stage=3)
    assert wide["reduce_bucket_size"] == 2**26  # a bucket always holds the largest tensor whole


def test_stages_1_and_2_get_buckets_only_and_stage_0_nothing():
    assert set(model_sized_zero(_spec(2), 2)) == {"reduce_bucket_size", "allgather_bucket_size"}
    assert set(model_sized_zero(_spec(1), 2)) == {"reduce_bucket_size", "allgather_bucket_size"}
    assert model_sized_zero(_spec(0), 2) == {}


def test_user_config_overrides_each_size():
    raw = {"zero_optimization": {"reduce_bucket_size": 5e8, "sub_group_size": 1e9}}
    zero = build_deepspeed_config(_spec(3, config=raw))["zero_optimization"]
    assert zero["reduce_bucket_size"] == 5e8 and zero["sub_group_size"] == 1e9
    assert zero["stage3_max_live_parameters"] == 6 * 4 * 2048 * 2048  # the rest stays model-sized


def test_custom_workload_keeps_deepspeed_defaults():
    assert model_sized_zero(_spec(3, model={}, workload="mypkg.train:main"), 2) == {}
