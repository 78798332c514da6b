"""The GPU path, checked without a GPU: a use_gpu spec builds a trainer with NCCL, GPU resources and bf16, and the
workers' optimizer is torch's fused AdamW on CUDA. The trainer is built, never run."""

from __future__ import annotations

import pytest
import torch

from orchestrator.control.ray_jobs import job_runtime_env
from orchestrator.core.deepspeed_config import build_deepspeed_config
from orchestrator.core.spec import load_spec_file
from orchestrator.runtime.driver import build_trainer
from orchestrator.runtime.worker import build_optimizer
from tests.paths import EXAMPLES

EXAMPLES = EXAMPLES


@pytest.fixture(scope="module")
def gpu_spec():
    return load_spec_file(EXAMPLES / "gpt-gpu.yaml")


def test_gpu_example_is_a_124m_gpt_with_bf16_and_zero1(gpu_spec):
    from orchestrator.workloads import BUILTIN_WORKLOADS
    from orchestrator.workloads.gpt.config import GPTModelConfig

    params = BUILTIN_WORKLOADS["gpt"].model_facts(GPTModelConfig(**gpu_spec.model), 1).params
    assert 120e6 < params < 130e6
    ds = build_deepspeed_config(gpu_spec)
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage"] == 1


def test_use_gpu_spec_builds_a_nccl_trainer_with_gpu_resources(gpu_spec):
    trainer = build_trainer(gpu_spec, "gpt-gpu-test", "s3://bucket/runs/jobs/gpt-gpu-test")
    assert trainer.backend_config.backend == "nccl"
    scaling = trainer.scaling_config
    assert scaling.use_gpu is True and scaling.num_workers == 2
    assert scaling.resources_per_worker == {"CPU": 4.0, "GPU": 1.0}
    # The workers rebuild the spec from this config: bf16 reaches them.
    assert trainer.train_loop_config["spec"]["deepspeed"]["precision"] == "bf16"


def test_cpu_spec_builds_a_gloo_trainer_without_gpus():
    trainer = build_trainer(load_spec_file(EXAMPLES / "gpt-zero3.yaml"), "cpu-test", "file:///tmp/unused")
    assert trainer.backend_config.backend == "gloo"
    assert trainer.scaling_config.use_gpu is False
    assert "GPU" not in trainer.scaling_config.resources_per_worker


def test_training_workers_run_at_normal_priority():
    # Not Ray's default niceness 15 for workers, below its own daemons.
    trainer = build_trainer(load_spec_file(EXAMPLES / "mlp-digits.yaml"), "cpu-test", "file:///tmp/unused")
    assert trainer.run_config.worker_runtime_env["env_vars"]["RAY_worker_niceness"] == "0"


def test_gpu_jobs_let_deepspeed_pick_cuda():
    assert "DS_ACCELERATOR" not in job_runtime_env(True, None, {}, None)["env_vars"]
    assert job_runtime_env(False, None, {}, None)["env_vars"]["DS_ACCELERATOR"] == "cpu"


@pytest.mark.parametrize(("offload", "fused"), [
    (False, True),  # one fused kernel per tensor, on CPU as on CUDA: no tensor-sized temporaries
    (True, False),  # ZeRO-Offload steps the optimizer on DeepSpeed's own host copies of the parameters
])
def test_adamw_is_fused_unless_deepspeed_offloads_it(offload, fused):
    spec = load_spec_file(EXAMPLES / "gpt-gpu.yaml", [f"deepspeed.offload_optimizer={str(offload).lower()}"])
    optimizer = build_optimizer(torch.nn.Linear(4, 4), spec)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is fused
    assert optimizer.defaults["lr"] == spec.train.lr and optimizer.defaults["weight_decay"] == spec.train.weight_decay


def test_fused_adamw_on_cpu_matches_the_unfused_update():
    torch.manual_seed(0)
    weights = torch.randn(1000)
    updated = []
    for fused in (True, False):
        param = torch.nn.Parameter(weights.clone())
        optimizer = torch.optim.AdamW([param], lr=1e-2, weight_decay=0.1, fused=fused)
        for step in range(3):
            param.grad = torch.sin(weights * (step + 1))
            optimizer.step()
        updated.append(param.detach())
    assert torch.allclose(updated[0], updated[1], rtol=1e-5, atol=1e-7)


def test_remote_cluster_gets_no_paths_or_profiles_from_this_machine(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "dev")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.internal:9000")
    local = job_runtime_env(False, None, {}, None, same_machine=True)["env_vars"]
    remote = job_runtime_env(False, None, {}, None, same_machine=False)["env_vars"]
    assert local["AWS_PROFILE"] == "dev" and "TORCH_EXTENSIONS_DIR" in local
    assert "AWS_PROFILE" not in remote and "TORCH_EXTENSIONS_DIR" not in remote and "ORCH_HOME" not in remote
    assert remote["AWS_ENDPOINT_URL"] == "http://s3.internal:9000"
