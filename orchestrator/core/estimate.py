"""Know before you launch: per-worker memory, FLOPs and the admission check `orch submit` runs.

Torch-free at import (the control plane uses it); DeepSpeed's own estimators and the throughput probe
are imported only when asked for.

Model states per worker (P parameters, N data-parallel workers, b = 4 bytes for fp32, 2 for bf16/fp16).
These rules are not the textbook ones: they are what DeepSpeed 0.19 actually allocates with our client
optimizer (torch AdamW: fp32 exp_avg + exp_avg_sq = 8 bytes/param), measured by orchestrator/runtime/memstats.py
at the end of the first optimizer update, when everything below coexists (bench/bench_memory.py shows
estimate vs measured; tests check 20%):

    stage  params   grads               fp32 master          Adam moments
    0      b        b (+4 if b < 4)     4 if b < 4, else 0    8
    1, 2   b        4/N                 4/N                   8/N
    3      b/N      b/N + 4 x S         4/N                   8/N

- ZeRO-1/2 keep a separate fp32 partition of the master weights even in fp32 training, and reduce the
  gradients straight into an fp32 partition, so stages 1 and 2 hold the same bytes at the update.
- ZeRO-3 keeps the gradient partition in the parameters' dtype, and gives the fp32 master a gradient one
  optimizer sub group at a time: S = min(sub_group_size, P/N) elements (orchestrator/core/zero_sizing.py sizes
  it; DeepSpeed's default 1e9 makes it the whole partition, (b + 4)/N). The fused AdamW kernel updates in
  place: the unfused one would add two temporaries the size of what it updates (the whole partition under
  ZeRO-1/2).
- The classic "16 bytes/param, /N under ZeRO-3" (2 + 2 + 12, mixed precision) is therefore what ZeRO-3
  holds here with model-sized sub groups; DeepSpeed's own estimators assume fp16 mixed precision (18/N for
  ZeRO-3, 2 + 18/N for ZeRO-2) and are shown next to ours by `orch estimate`.
- offload_optimizer moves master, moments and gradient partitions to host memory, and adds a b/N param
  staging copy plus two gradient staging buffers of the largest tensor (4 bytes each). offload_param
  moves the ZeRO-3 parameter shards to host memory too.

Buffers: DeepSpeed's gradient reduce bucket is `reduce_bucket_size` elements (sized from the model by
orchestrator/core/zero_sizing.py; DeepSpeed's default is 5e8). ZeRO-3 allocates it (in the parameters' dtype) for
the whole run; ZeRO-1/2 allocate it for each backward pass. A GPU pays for the whole allocation; on CPU only
the pages gradients are written to become resident: min(bucket, P). ZeRO-3 also holds the parameters it
gathers for forward and backward, at most `stage3_max_live_parameters` elements in the parameters' dtype.
On CPU, ZeRO-1/2 peak one more whole model in the parameters' dtype when they all-gather the updated weights
(gloo stages the gather through a copy).
Activations are estimated per micro batch (see `activation_bytes`); the runtime line is the resident
memory of a Ray Train worker that has imported torch and DeepSpeed, before any model exists, plus what the
workload's own libraries add (the registry's `runtime_bytes`: transformers for llama).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.core.errors import OrchError
from orchestrator.core.noise import library_output
from orchestrator.core.spec import JobSpec
from orchestrator.core.zero_sizing import model_sized_zero
from orchestrator.workloads.facts import ModelFacts

if TYPE_CHECKING:
    from orchestrator.workloads import Workload

GiB = 2**30
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DEFAULT_REDUCE_BUCKET = 500_000_000  # DeepSpeed's zero_optimization.reduce_bucket_size default
DEFAULT_SUB_GROUP = 1_000_000_000  # ... sub_group_size default
DEFAULT_MAX_LIVE = 1_000_000_000  # ... stage3_max_live_parameters default
RUNTIME_BYTES = 600 * 2**20  # resident size of an idle Ray Train worker with torch + DeepSpeed imported
MODEL_STATE_COMPONENTS = ("params", "grads", "master", "optimizer_states")

# Dense bf16 peak FLOP/s per GPU (vendor data sheets, without sparsity), for MFU. ORCH_PEAK_FLOPS overrides.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "A10": 125e12,
              "L4": 121e12, "V100": 125e12, "T4": 65e12}


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    where: str  # "device" (the GPU on GPU jobs, host memory on CPU jobs) or "host"
    note: str = ""


@dataclass
class Estimate:
    workload: str
    params: int
    num_workers: int
    zero_stage: int
    precision: str
    components: list[Component]
    flops_per_token: float
    tokens_per_step: int  # global, summed over workers (samples for workloads without tokens)
    token_unit: str
    use_gpu: bool
    deepspeed: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def component(self, name: str) -> int:
        return sum(c.bytes for c in self.components if c.name == name)

    @property
    def model_states(self) -> int:
        return sum(self.component(n) for n in MODEL_STATE_COMPONENTS)

    @property
    def total(self) -> int:
        """What one worker needs: device and host together on CPU jobs (the same memory)."""
        return sum(c.bytes for c in self.components)

    def on(self, where: str) -> int:
        return sum(c.bytes for c in self.components if c.where == where)

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_token * self.tokens_per_step

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(model_states_bytes=self.model_states, total_bytes_per_worker=self.total,
                    flops_per_step=self.flops_per_step,
                    flops_per_step_per_worker=self.flops_per_step / self.num_workers)
        return data


# ---- model shape -------------------------------------------------------------------------------------
def model_facts(spec: JobSpec) -> ModelFacts:
    """Parameters, largest tensor, FLOPs per token or sample, and micro-batch size of a built-in workload."""
    workload = builtin_workload(spec)
    return workload.model_facts(workload.model_config(**spec.model), spec.deepspeed.micro_batch_size)


def activation_bytes(spec: JobSpec) -> tuple[int, str]:
    """Peak activation memory of one micro batch's forward + backward, and how it was counted."""
    workload = builtin_workload(spec)
    memory = workload.activation_memory(workload.model_config(**spec.model), spec.deepspeed.micro_batch_size,
                                        BYTES[spec.deepspeed.precision], spec.deepspeed.activation_checkpointing)
    return memory.bytes, memory.how


def builtin_workload(spec: JobSpec) -> Workload:
    from orchestrator.workloads import BUILTIN_WORKLOADS

    workload = BUILTIN_WORKLOADS.get(spec.workload)
    if workload is None:
        raise OrchError(
            f"workload '{spec.workload}' is custom code, so its size is unknown before it runs: estimates cover "
            f"the built-in workloads ({', '.join(sorted(BUILTIN_WORKLOADS))})."
        )
    return workload


# ---- the estimate ------------------------------------------------------------------------------------------
def model_state_rule(stage: int, precision: str, num_workers: int) -> dict[str, float]:
    """Bytes per parameter per worker, by component (the table in the module docstring)."""
    b, n = BYTES[precision], num_workers
    mixed = b < 4
    if stage == 0:
        return {"params": b, "grads": b + (4 if mixed else 0), "master": 4 if mixed else 0, "optimizer_states": 8}
    if stage in (1, 2):
        return {"params": b, "grads": 4 / n, "master": 4 / n, "optimizer_states": 8 / n}
    # The fp32 gradient of one optimizer sub group comes on top (see sub_group_grads).
    return {"params": b / n, "grads": b / n, "master": 4 / n, "optimizer_states": 8 / n}


def zero_config(spec: JobSpec, num_workers: int) -> dict[str, Any]:
    """The zero_optimization section the job runs with: model-sized defaults, the user's entries over them."""
    return {**model_sized_zero(spec, num_workers), **spec.deepspeed.config.get("zero_optimization", {})}


def sub_group_elements(spec: JobSpec, params: int, num_workers: int) -> int:
    """Elements of the largest slice ZeRO-3 updates the local partition in.

    DeepSpeed closes a sub group at the first parameter that takes it to sub_group_size or past it, so a sub
    group can overshoot by up to one parameter's partition.
    """
    size = int(float(zero_config(spec, num_workers).get("sub_group_size", DEFAULT_SUB_GROUP)))
    largest = model_facts(spec).largest_tensor
    return min(size + -(-largest // num_workers), -(-params // num_workers))


def estimate(spec: JobSpec, num_workers: int | None = None) -> Estimate:
    """Per-worker memory and per-step FLOPs of `spec` (optionally as if run on `num_workers`)."""
    n = num_workers or spec.scaling.num_workers
    ds = spec.deepspeed
    facts = model_facts(spec)
    params, largest = facts.params, facts.largest_tensor
    flops_per_unit, units_per_micro, unit = facts.flops_per_unit, facts.units_per_micro, facts.unit
    rule = model_state_rule(ds.zero_stage, ds.precision, n)
    off_opt, off_param = ds.offload_optimizer, ds.offload_param
    where = {"params": "host" if off_param else "device", "grads": "host" if off_opt else "device",
             "master": "host" if off_opt else "device", "optimizer_states": "host" if off_opt else "device"}
    notes = {"params": "whole model" if ds.zero_stage < 3 else f"1/{n} shard",
             "grads": f"{rule['grads']:.3g} B/param", "master": f"{rule['master']:.3g} B/param",
             "optimizer_states": f"AdamW exp_avg + exp_avg_sq, {rule['optimizer_states']:.3g} B/param"}
    components = [Component(name, int(params * rule[name]), where[name], notes[name]) for name in rule]
    if ds.zero_stage == 3:
        sub = sub_group_elements(spec, params, n)
        components.append(Component("grads", 4 * sub, where["grads"],
                                    f"fp32 gradient of one optimizer sub group ({sub:,} elements)"))
    act, how = activation_bytes(spec)
    components.append(Component("activations", act, "device", how))
    components += _buffers(spec, params, largest, n)
    extra = builtin_workload(spec).runtime_bytes
    components.append(Component("runtime", RUNTIME_BYTES + extra, "host", "torch + DeepSpeed + Ray worker process"
                                + (f" + the {spec.workload} workload's libraries" if extra else "")))
    tokens_per_step = units_per_micro * ds.gradient_accumulation_steps * n
    return Estimate(workload=spec.workload, params=params, num_workers=n, zero_stage=ds.zero_stage,
                    precision=ds.precision, components=components, flops_per_token=flops_per_unit,
                    tokens_per_step=tokens_per_step, token_unit=unit, use_gpu=spec.scaling.use_gpu)


def _buffers(spec: JobSpec, params: int, largest: int, n: int) -> list[Component]:
    ds = spec.deepspeed
    b = BYTES[ds.precision]
    zero_cfg = zero_config(spec, n)
    bucket = int(zero_cfg.get("reduce_bucket_size", DEFAULT_REDUCE_BUCKET))
    out = []
    if ds.zero_stage >= 1:
        # A GPU pays for the whole bucket; on CPU only the part gradients are written to becomes resident.
        elems = bucket if spec.scaling.use_gpu else min(bucket, params)
        dtype_bytes = 4 if ds.zero_stage == 1 else b
        when = "whole run" if ds.zero_stage == 3 else "during backward"
        out.append(Component("buffers", elems * dtype_bytes, "device",
                             f"reduce bucket ({when}); allocated {bucket * dtype_bytes / GiB:.2f} GiB, "
                             "zero_optimization.reduce_bucket_size sets it"))
    if ds.zero_stage == 3:
        live = min(int(zero_cfg.get("stage3_max_live_parameters", DEFAULT_MAX_LIVE)), params)
        out.append(Component("buffers", live * b, "device",
                             "parameters gathered for forward/backward (stage3_max_live_parameters)"))
    if ds.zero_stage in (1, 2) and not ds.offload_optimizer and not spec.scaling.use_gpu:
        # Measured with bench/zero3_probe.py: from the second step on, the all-gather of the updated weights
        # peaks one whole model in the parameters' dtype above the step before (gloo's all_gather_into_tensor
        # stages through a copy; NCCL writes into the flat buffer in place).
        out.append(Component("buffers", params * b, "device",
                             "all-gather of the updated weights after each step (staging copy on CPU)"))
    if ds.offload_optimizer and ds.zero_stage in (1, 2):
        out.append(Component("buffers", int(params * b / n) + 2 * 4 * largest, "host",
                             "offload staging: param copy + 2 gradient buffers"))
    return out


def deepspeed_estimate(est: Estimate, spec: JobSpec) -> dict[str, Any] | None:
    """DeepSpeed's own model-state estimators (fp16 mixed precision assumed), for comparison."""
    ds = spec.deepspeed
    if ds.zero_stage == 0:
        return None
    largest = model_facts(spec).largest_tensor
    n = est.num_workers
    # DeepSpeed logs its accelerator choice on import; keep it off stdout (--json), and quiet unless --verbose.
    with library_output():
        return _deepspeed_estimate(ds, est.params, largest, n)


def _deepspeed_estimate(ds: Any, params: int, largest: int, n: int) -> dict[str, Any]:
    if ds.zero_stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=n, num_nodes=1,
                                                         cpu_offload=ds.offload_optimizer)
        name = "estimate_zero2_model_states_mem_needs"
    else:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            params, largest, num_gpus_per_node=n, num_nodes=1, cpu_offload=ds.offload_optimizer,
            cpu_offload_params=ds.offload_param, zero_init=True)
        name = "estimate_zero3_model_states_mem_needs"
    # DeepSpeed's "per GPU" is device memory of one worker; its "per CPU" is the whole node's host memory.
    return {"function": name, "per_gpu_bytes": int(gpu), "per_node_cpu_bytes": int(cpu),
            "assumes": "fp16 mixed precision, 1.5x host buffer factor"}


def peak_flops(device_name: str | None) -> float | None:
    """Peak FLOP/s of one worker's accelerator: ORCH_PEAK_FLOPS, else the table; None on CPU."""
    if os.environ.get("ORCH_PEAK_FLOPS"):
        return float(os.environ["ORCH_PEAK_FLOPS"])
    if not device_name:
        return None
    upper = device_name.upper()
    return next((v for k, v in PEAK_FLOPS.items() if k in upper), None)
