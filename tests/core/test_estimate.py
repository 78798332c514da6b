"""The memory / FLOPs estimator and the admission check, without a cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.control.admission import admission_check, worker_memory_budget
from orchestrator.core.errors import OrchError
from orchestrator.core.estimate import (
    RUNTIME_BYTES,
    GiB,
    deepspeed_estimate,
    estimate,
    model_state_rule,
)
from orchestrator.core.spec import load_spec_file
from orchestrator.workloads.gpt.config import GPTModelConfig, flops_per_token, param_count
from tests.paths import EXAMPLES, REPO_ROOT

REPO = REPO_ROOT
GPT = "jobs/examples/gpt-zero3.yaml"
# ~6.4M parameters: big enough that model states, not the fixed runtime, decide the verdict.
BIG = ["model.d_model=256", "model.n_layer=8", "deepspeed.precision=bf16", "deepspeed.micro_batch_size=1"]


def spec(*sets: str, path: str = GPT):
    return load_spec_file(REPO / path, list(sets))


@pytest.mark.parametrize(("stage", "precision", "n", "expected"), [
    (0, "fp32", 2, {"params": 4, "grads": 4, "master": 0, "optimizer_states": 8}),
    (0, "bf16", 2, {"params": 2, "grads": 6, "master": 4, "optimizer_states": 8}),
    (1, "fp32", 2, {"params": 4, "grads": 2, "master": 2, "optimizer_states": 4}),
    (2, "bf16", 4, {"params": 2, "grads": 1, "master": 1, "optimizer_states": 2}),
    # ZeRO-3: the gradient partition; the fp32 gradient of one optimizer sub group comes on top.
    (3, "fp32", 2, {"params": 2, "grads": 2, "master": 2, "optimizer_states": 4}),
    (3, "bf16", 4, {"params": 0.5, "grads": 0.5, "master": 1, "optimizer_states": 2}),
])
def test_bytes_per_param_rules_are_what_deepspeed_allocated(stage, precision, n, expected):
    # Measured with orchestrator/runtime/memstats.py on DeepSpeed 0.19 (see the estimate module docstring).
    assert model_state_rule(stage, precision, n) == expected


def test_estimate_components_for_the_gpt_example():
    s = spec()
    est = estimate(s)
    cfg = GPTModelConfig(**s.model)
    assert est.params == param_count(cfg) == 120_576
    assert est.model_states == 120_576 * 12  # ZeRO-3 fp32 over 2 workers: 24/N bytes per parameter
    assert est.component("params") == 120_576 * 2
    assert est.component("runtime") == RUNTIME_BYTES
    assert est.component("activations") > 0
    # The model-sized reduce bucket holds the whole (tiny) model; ZeRO-3 also gathers up to
    # stage3_max_live_parameters (here all of it); the fused AdamW step needs no temporaries.
    assert est.component("buffers") == 120_576 * 4 + 120_576 * 4
    assert est.total == sum(c.bytes for c in est.components)
    assert est.flops_per_token == flops_per_token(cfg)
    assert est.tokens_per_step == 8 * 64 * 2
    assert est.as_dict()["flops_per_step"] == est.flops_per_token * 1024


def test_zero3_sub_group_bounds_the_fp32_gradients():
    big = ("model.d_model=2048", "model.n_layer=20", "model.n_head=16", "model.seq_len=128",
           "deepspeed.precision=bf16", "deepspeed.micro_batch_size=1", "deepspeed.activation_checkpointing=true")
    sliced = estimate(spec(*big))
    whole = estimate(spec(*big, "deepspeed.config.zero_optimization.sub_group_size=1000000000"))
    local = -(-sliced.params // 2)
    largest = 4 * 2048 * 2048
    # bf16 partition + the largest sub group: sub_group_size, overshot by up to one parameter's partition.
    assert sliced.component("grads") == sliced.params + 4 * (2 * largest + largest // 2)
    assert whole.component("grads") == sliced.params + 4 * local  # DeepSpeed's default: the whole partition
    # 16 bytes per parameter over 2 workers, plus sub-group and gathering buffers: under 9 GiB per worker.
    assert sliced.model_states < 8.3 * GiB and sliced.total < 9 * GiB < whole.total


def test_more_workers_shrink_zero3_states_but_not_zero0():
    s3 = spec()
    assert estimate(s3, num_workers=4).model_states == estimate(s3).model_states // 2
    s0 = spec("deepspeed.zero_stage=0")
    assert estimate(s0, num_workers=4).model_states == estimate(s0).model_states == 16 * 120_576


def test_activation_checkpointing_and_micro_batch_shrink_activations():
    base = estimate(spec(*BIG)).component("activations")
    assert estimate(spec(*BIG, "deepspeed.activation_checkpointing=true")).component("activations") < base
    assert estimate(spec("model.d_model=256", "model.n_layer=8", "deepspeed.precision=bf16",
                         "deepspeed.micro_batch_size=4")).component("activations") > 3 * base


def test_offload_moves_optimizer_to_host():
    est = estimate(spec("deepspeed.offload_optimizer=true", "scaling.use_gpu=true"))
    where = {c.name: c.where for c in est.components}
    assert where["optimizer_states"] == where["master"] == "host"
    assert where["params"] == "device"


def test_mlp_estimate():
    est = estimate(spec(path="jobs/examples/mlp-digits.yaml"))
    assert est.params == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert est.token_unit == "samples" and est.flops_per_token == 6 * est.params


def test_custom_workload_cannot_be_sized():
    s = load_spec_file(REPO / GPT, ["workload=mypkg.train:main", "model={}", "data={}"])
    with pytest.raises(OrchError, match="custom code"):
        estimate(s)
    assert admission_check(s, [], override_gb=0.001) is None  # nothing to check, nothing refused


def test_budget_is_node_memory_per_cpu_times_cpus_per_worker(monkeypatch):
    monkeypatch.delenv("ORCH_WORKER_MEMORY_GB", raising=False)
    nodes = [{"resources_total": {"CPU": 8.0, "memory": 32 * GiB}},
             {"resources_total": {"CPU": 4.0, "memory": 32 * GiB}},
             {"resources_total": {"GPU": 1.0}}]
    assert worker_memory_budget(nodes, 2.0) == (16 * GiB, "node memory / CPUs x 2 CPUs per worker")
    monkeypatch.setenv("ORCH_WORKER_MEMORY_GB", "3")
    assert worker_memory_budget(nodes, 2.0) == (3 * GiB, "ORCH_WORKER_MEMORY_GB")
    assert worker_memory_budget(nodes, 2.0, override_gb=1.5) == (int(1.5 * GiB), "--memory-per-worker")
    monkeypatch.setenv("ORCH_WORKER_MEMORY_GB", "lots")
    with pytest.raises(OrchError, match="ORCH_WORKER_MEMORY_GB='lots' is not a number"):
        worker_memory_budget(nodes, 1.0)


def _between(low, high) -> float:
    return (low.total + high.total) / 2 / GiB


def test_admission_refuses_zero0_with_numbers_and_fixes_and_accepts_zero3():
    zero0, zero3 = spec(*BIG, "deepspeed.zero_stage=0"), spec(*BIG, "deepspeed.zero_stage=3")
    budget_gb = _between(estimate(zero3), estimate(zero0))
    with pytest.raises(OrchError) as refused:
        admission_check(zero0, [], override_gb=budget_gb)
    message = str(refused.value)
    assert f"{estimate(zero0).params:,} parameters" in message
    assert "ZeRO-0" in message and "--memory-per-worker" in message and "--force" in message
    assert "deepspeed.zero_stage=3" in message  # a fix that fits, with its own figure
    assert "optimizer_states" in message and "MiB per worker" in message
    assert admission_check(zero3, [], override_gb=budget_gb) is not None


def test_admission_uses_the_cluster_nodes_when_no_override(monkeypatch):
    monkeypatch.delenv("ORCH_WORKER_MEMORY_GB", raising=False)
    tiny_node = [{"resources_total": {"CPU": 2.0, "memory": 0.5 * GiB}}]  # 256 MiB per worker < runtime alone
    with pytest.raises(OrchError, match=r"node memory / CPUs x 1 CPUs per worker"):
        admission_check(spec(), tiny_node)
    assert admission_check(spec(), [{"resources_total": {"CPU": 2.0, "memory": 16 * GiB}}]) is not None


def test_zero1_and_2_on_cpu_count_the_all_gather_staging_copy_of_the_weights():
    for stage in (1, 2):
        buffers = [c for c in estimate(spec(f"deepspeed.zero_stage={stage}")).components if c.name == "buffers"]
        staging = [c for c in buffers if "all-gather" in c.note]
        assert [c.bytes for c in staging] == [120_576 * 4]  # one fp32 copy of the whole model
    on_gpu = estimate(spec("deepspeed.zero_stage=2", "scaling.use_gpu=true"))
    assert not [c for c in on_gpu.components if "all-gather" in c.note]  # NCCL gathers in place
    assert not [c for c in estimate(spec()).components if "all-gather" in c.note]  # ZeRO-3 gathers per parameter


def test_deepspeed_estimators_are_shown_for_comparison():
    s = spec("deepspeed.zero_stage=2")
    ds = deepspeed_estimate(estimate(s), s)
    # DeepSpeed's ZeRO-2 rule (fp16 mixed precision): 2P + 18P/N per GPU.
    assert ds["per_gpu_bytes"] == 2 * 120_576 + int(18 * 120_576 / 2)
    s3 = spec()
    assert deepspeed_estimate(estimate(s3), s3)["function"] == "estimate_zero3_model_states_mem_needs"
    assert deepspeed_estimate(estimate(spec("deepspeed.zero_stage=0")), spec("deepspeed.zero_stage=0")) is None


def test_estimate_module_does_not_import_torch():
    code = "import sys, orchestrator.core.estimate, orchestrator.control.cli.insights; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True).stdout.strip() \
        == "False"


def _orch(*args: str, tmp_path: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}, "ORCH_HOME": str(tmp_path),
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)


def test_orch_estimate_json_and_budget_verdict(tmp_path):
    proc = _orch("estimate", GPT, "--json", "--memory-per-worker", "4", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["params"] == 120_576 and data["fits"] is True
    assert data["model_states_bytes"] == 12 * 120_576
    assert {c["name"] for c in data["components"]} == {"params", "grads", "master", "optimizer_states",
                                                       "activations", "buffers", "runtime"}
    assert data["deepspeed"]["per_gpu_bytes"] > 0
    proc = _orch("estimate", GPT, "--memory-per-worker", "0.1", tmp_path=tmp_path)
    assert proc.returncode == 1 and "does not fit" in proc.stdout


def test_orch_estimate_probe_times_real_steps(tmp_path):
    proc = _orch("estimate", GPT, "--json", "--probe", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout)["probe"]
    assert probe["steps_timed"] == 3 and probe["step_time_s"] > 0
    assert probe["tokens_per_s_per_worker"] == pytest.approx(8 * 64 / probe["step_time_s"])
    assert probe["tokens_per_s_job_upper_bound"] == pytest.approx(2 * probe["tokens_per_s_per_worker"])


def test_orch_estimate_bad_spec_is_one_paragraph(tmp_path):
    proc = _orch("estimate", GPT, "--set", "model.n_layers=3", tmp_path=tmp_path)
    assert proc.returncode == 2 and "model.n_layers" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_node_list_checks_only_an_explicit_budget(monkeypatch):
    from orchestrator.control.admission import check_fits_cluster

    monkeypatch.delenv("ORCH_WORKER_MEMORY_GB", raising=False)
    assert check_fits_cluster(spec(), "http://127.0.0.1:9") is not None
    with pytest.raises(OrchError, match="--memory-per-worker"):
        check_fits_cluster(spec(), "http://127.0.0.1:9", override_gb=0.01)


def test_manager_submit_refuses_before_writing_and_force_overrides(tmp_path, monkeypatch):
    from orchestrator.control import manager as manager_module
    from orchestrator.control.manager import JobManager
    from tests.control.test_manager import URL, FakeRay

    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORCH_WORKER_MEMORY_GB", "0.5")  # less than one worker's runtime alone
    monkeypatch.setattr(manager_module, "cluster_totals", lambda url: {"CPU": 2.0, "GPU": 0.0})
    mgr = JobManager(address=URL)
    mgr._shares_machine[URL] = True  # the fake cluster runs here
    mgr._ray[URL] = FakeRay()
    with pytest.raises(OrchError, match="ORCH_WORKER_MEMORY_GB"):
        mgr.submit(spec())
    assert mgr.db.list() == [] and not (tmp_path / "home" / "storage" / "jobs").exists()
    assert mgr._ray[URL].submitted == []
    rec = mgr.submit(spec(), force=True)
    assert mgr._ray[URL].submitted == [rec.id]
    assert mgr.submit(spec(), memory_per_worker_gb=4.0).id != rec.id  # an explicit budget replaces the env's


def test_a_workloads_own_libraries_add_to_the_runtime():
    from orchestrator.workloads import BUILTIN_WORKLOADS

    spec = load_spec_file(EXAMPLES / "llama-zero3.yaml")
    est = estimate(spec)
    assert BUILTIN_WORKLOADS["llama"].runtime_bytes > 0
    assert est.component("runtime") == RUNTIME_BYTES + BUILTIN_WORKLOADS["llama"].runtime_bytes
    assert est.params == BUILTIN_WORKLOADS["llama"].model_facts(
        BUILTIN_WORKLOADS["llama"].model_config(**spec.model), 1).params
