"""Know before you launch: per-worker memory, FLOPs and the admission check `orch submit` runs.

Torch-free at import (the control plane uses it); DeepSpeed's own estimators and the throughput probe
are imported only when asked for.

Model states per worker (P parameters, N data-parallel workers, b = 4 bytes for fp32, 2 for bf16/fp16).
These rules are not the textbook ones: they are what DeepSpeed 0.19 actually allocates with our client
optimizer (torch AdamW: fp32 exp_avg + exp_avg_sq = 8 bytes/param), measured by orchestrator/memstats.py
at the end of the first optimizer update, when everything below coexists (bench/bench_memory.py shows
estimate vs measured; tests check 20%):

    stage  params   grads               fp32 master          Adam moments
    0      b        b (+4 if b < 4)     4 if b < 4, else 0    8
    1, 2   b        4/N                 4/N                   8/N
    3      b/N      (b + 4)/N           4/N                   8/N

- ZeRO-1/2 keep a separate fp32 partition of the master weights even in fp32 training, and reduce the
  gradients straight into an fp32 partition, so stages 1 and 2 hold the same bytes at the update.
- ZeRO-3 keeps the gradient partition in the parameters' dtype and the fp32 master's own gradient.
- The classic "16 bytes/param, /N under ZeRO-3" (2 + 2 + 12, mixed precision) is therefore 20/N for
  bf16 and 24/N for fp32 here; DeepSpeed's own estimators assume fp16 mixed precision (18/N for ZeRO-3,
  2 + 18/N for ZeRO-2) and are shown next to ours by `orch estimate`.
- offload_optimizer moves master, moments and gradient partitions to host memory, and adds a b/N param
  staging copy plus two gradient staging buffers of the largest tensor (4 bytes each). offload_param
  moves the ZeRO-3 parameter shards to host memory too.

Buffers: DeepSpeed's gradient reduce bucket is `reduce_bucket_size` elements (default 5e8). ZeRO-3 allocates
it (in the parameters' dtype) for the whole run; ZeRO-1/2 allocate it for each backward pass. A GPU pays
for the whole allocation; on CPU only the pages gradients are written to become resident: min(bucket, P).
Activations are estimated per micro batch (see `activation_bytes`); the runtime line is the resident
memory of a Ray Train worker that has imported torch and DeepSpeed, before any model exists.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from cluster.address import ClusterUnavailable, fetch_nodes
from orchestrator.errors import OrchError
from orchestrator.noise import library_output
from orchestrator.spec import JobSpec

GiB = 2**30
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DEFAULT_REDUCE_BUCKET = 500_000_000  # DeepSpeed's zero_optimization.reduce_bucket_size default
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
def model_facts(spec: JobSpec) -> tuple[int, int, float, int, str]:
    """(params, largest tensor, training FLOPs per token or sample, tokens or samples per micro batch, unit)."""
    from jobs import BUILTIN_WORKLOADS

    workload = BUILTIN_WORKLOADS.get(spec.workload)
    if workload is None:
        raise OrchError(
            f"workload '{spec.workload}' is custom code, so its size is unknown before it runs: estimates cover "
            f"the built-in workloads ({', '.join(sorted(BUILTIN_WORKLOADS))})."
        )
    cfg = workload.model_config(**spec.model)
    params = workload.param_count(cfg)
    micro = spec.deepspeed.micro_batch_size
    if spec.workload == "gpt":
        from jobs.gpt.config import flops_per_token

        d = cfg.d_model
        largest = max(cfg.vocab_size * d, 4 * d * d, cfg.seq_len * d)
        return params, largest, float(flops_per_token(cfg)), micro * cfg.seq_len, "tokens"
    from jobs.mlp.config import N_CLASSES, N_FEATURES

    sizes = [N_FEATURES, *cfg.hidden_sizes, N_CLASSES]
    largest = max(a * b for a, b in zip(sizes, sizes[1:], strict=False))
    return params, largest, 6.0 * params, micro, "samples"  # forward 2N, backward 4N per sample


def activation_bytes(spec: JobSpec) -> tuple[int, str]:
    """Peak activation memory of one micro batch's forward + backward, and how it was counted."""
    act = BYTES[spec.deepspeed.precision]
    micro = spec.deepspeed.micro_batch_size
    if spec.workload == "gpt":
        from jobs.gpt.config import GPTModelConfig

        cfg = GPTModelConfig(**spec.model)
        tokens = micro * cfg.seq_len
        # Saved for backward per token and layer (pre-LN block): LN in/out x2 (4d), qkv (3d), attention out
        # and its projection input (2d), residual (d), MLP up and GELU out (8d) = ~17d elements, as in
        # Korthikanti et al.'s 34*s*b*h bytes at 2 bytes/element. CPU SDPA keeps only a log-sum-exp; with
        # dropout the math path keeps the T x T probabilities and their mask.
        per_layer = 17 * cfg.d_model * tokens * act
        if cfg.dropout > 0:
            per_layer += micro * cfg.n_head * cfg.seq_len**2 * (act + 1) + 4 * cfg.d_model * tokens
        # Logits in the model dtype, their fp32 copy for the loss (bf16 only) and the saved log-softmax.
        head = tokens * cfg.vocab_size * (act + 4 + (4 if act < 4 else 0)) + 3 * cfg.d_model * tokens * act
        if spec.deepspeed.activation_checkpointing:
            # Block inputs only, plus one block recomputed at a time during backward.
            kept = cfg.n_layer * cfg.d_model * tokens * act + per_layer
            how = "checkpointed: block inputs + one recomputed block"
        else:
            kept = cfg.n_layer * per_layer
            how = f"{cfg.n_layer} layers x ~17*d per token"
        # Backward holds one layer's activation gradients on top of what forward kept.
        return kept + per_layer + head, how + f", micro batch {micro} x seq {cfg.seq_len}"
    from jobs.mlp.config import N_CLASSES, N_FEATURES, MLPModelConfig

    cfg = MLPModelConfig(**spec.model)
    per_sample = N_FEATURES + sum(3 * h for h in cfg.hidden_sizes) + 3 * N_CLASSES
    return 2 * micro * per_sample * act, f"micro batch {micro}: inputs, linear/activation/dropout outputs"


# ---- the estimate ------------------------------------------------------------------------------------------
def model_state_rule(stage: int, precision: str, num_workers: int) -> dict[str, float]:
    """Bytes per parameter per worker, by component (the table in the module docstring)."""
    b, n = BYTES[precision], num_workers
    mixed = b < 4
    if stage == 0:
        return {"params": b, "grads": b + (4 if mixed else 0), "master": 4 if mixed else 0, "optimizer_states": 8}
    if stage in (1, 2):
        return {"params": b, "grads": 4 / n, "master": 4 / n, "optimizer_states": 8 / n}
    return {"params": b / n, "grads": (b + 4) / n, "master": 4 / n, "optimizer_states": 8 / n}


def estimate(spec: JobSpec, num_workers: int | None = None) -> Estimate:
    """Per-worker memory and per-step FLOPs of `spec` (optionally as if run on `num_workers`)."""
    n = num_workers or spec.scaling.num_workers
    ds = spec.deepspeed
    params, largest, flops_per_unit, units_per_micro, unit = model_facts(spec)
    rule = model_state_rule(ds.zero_stage, ds.precision, n)
    off_opt, off_param = ds.offload_optimizer, ds.offload_param
    where = {"params": "host" if off_param else "device", "grads": "host" if off_opt else "device",
             "master": "host" if off_opt else "device", "optimizer_states": "host" if off_opt else "device"}
    notes = {"params": "whole model" if ds.zero_stage < 3 else f"1/{n} shard",
             "grads": f"{rule['grads']:.3g} B/param", "master": f"{rule['master']:.3g} B/param",
             "optimizer_states": f"AdamW exp_avg + exp_avg_sq, {rule['optimizer_states']:.3g} B/param"}
    components = [Component(name, int(params * rule[name]), where[name], notes[name]) for name in rule]
    act, how = activation_bytes(spec)
    components.append(Component("activations", act, "device", how))
    components += _buffers(spec, params, largest, n)
    components.append(Component("runtime", RUNTIME_BYTES, "host", "torch + DeepSpeed + Ray worker process"))
    tokens_per_step = units_per_micro * ds.gradient_accumulation_steps * n
    return Estimate(workload=spec.workload, params=params, num_workers=n, zero_stage=ds.zero_stage,
                    precision=ds.precision, components=components, flops_per_token=flops_per_unit,
                    tokens_per_step=tokens_per_step, token_unit=unit, use_gpu=spec.scaling.use_gpu)


def _buffers(spec: JobSpec, params: int, largest: int, n: int) -> list[Component]:
    ds = spec.deepspeed
    b = BYTES[ds.precision]
    zero_cfg = ds.config.get("zero_optimization", {})
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
    if ds.offload_optimizer and ds.zero_stage in (1, 2):
        out.append(Component("buffers", int(params * b / n) + 2 * 4 * largest, "host",
                             "offload staging: param copy + 2 gradient buffers"))
    return out


def deepspeed_estimate(est: Estimate, spec: JobSpec) -> dict[str, Any] | None:
    """DeepSpeed's own model-state estimators (fp16 mixed precision assumed), for comparison."""
    ds = spec.deepspeed
    if ds.zero_stage == 0:
        return None
    _, largest, *_ = model_facts(spec)
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


# ---- admission ------------------------------------------------------------------------------------------------
def worker_memory_budget(nodes: list[dict], cpus_per_worker: float, override_gb: float | None = None
                         ) -> tuple[int, str]:
    """Memory one worker may use: the flag, else ORCH_WORKER_MEMORY_GB, else node memory per CPU x CPUs.

    The most generous node counts: a worker that does not fit there fits nowhere.
    """
    if override_gb is None and os.environ.get("ORCH_WORKER_MEMORY_GB"):
        try:
            override_gb = float(os.environ["ORCH_WORKER_MEMORY_GB"])
        except ValueError:
            raise OrchError(f"ORCH_WORKER_MEMORY_GB={os.environ['ORCH_WORKER_MEMORY_GB']!r} is not a number of "
                            "GiB; set it to e.g. 8 or unset it.") from None
        source = "ORCH_WORKER_MEMORY_GB"
    else:
        source = "--memory-per-worker"
    if override_gb is not None:
        if override_gb <= 0:
            raise OrchError(f"{source} must be a positive number of GiB, got {override_gb:g}.")
        return int(override_gb * GiB), source
    best = 0.0
    for node in nodes:
        total = node.get("resources_total", {})
        cpus, memory = float(total.get("CPU", 0)), float(total.get("memory", 0))
        if cpus > 0 and memory > 0:
            best = max(best, memory / cpus * cpus_per_worker)
    return int(best), f"node memory / CPUs x {cpus_per_worker:g} CPUs per worker"


def check_fits_cluster(spec: JobSpec, url: str, override_gb: float | None = None) -> Estimate | None:
    """`orch submit`'s memory admission against the cluster at `url` (its nodes give the default budget)."""
    try:
        nodes = fetch_nodes(url)
    except ClusterUnavailable:
        nodes = []  # no node list now (the CPU check just reached it): only an explicit budget is checked
    return admission_check(spec, nodes, override_gb)


def admission_check(spec: JobSpec, nodes: list[dict], override_gb: float | None = None) -> Estimate | None:
    """Raise OrchError if one worker of `spec` cannot fit its memory budget; None when it cannot be sized."""
    try:
        est = estimate(spec)
    except OrchError:
        return None  # custom workloads: nothing to check before they run
    budget, source = worker_memory_budget(nodes, spec.scaling.cpus_per_worker, override_gb)
    if budget <= 0:
        return est  # the cluster does not report memory; nothing to compare with
    need = est.on("host") if spec.scaling.use_gpu else est.total
    if need <= budget:
        return est
    parts = ", ".join(f"{c.name} {_gib(c.bytes)}" for c in _merged(est) if c.bytes)
    fixes = suggest_fixes(spec, budget)
    raise OrchError(
        f"Job '{spec.name}' needs about {_gib(need)} per worker ({parts}; {est.params:,} parameters, ZeRO-"
        f"{spec.deepspeed.zero_stage}, {spec.deepspeed.precision}, {est.num_workers} workers), but a worker may use "
        f"{_gib(budget)} ({source}). " + (f"What would fit: {'; '.join(fixes)}. " if fixes else
                                          "No single change makes it fit: use a smaller model or bigger nodes. ")
        + "See `orch estimate` for the breakdown; --force submits anyway."
    )


def suggest_fixes(spec: JobSpec, budget: int) -> list[str]:
    """Single changes (stage, offload, workers, batch, checkpointing) under which one worker fits."""
    ds, sc = spec.deepspeed, spec.scaling
    trials: list[tuple[str, dict[str, Any]]] = []
    for stage in range(ds.zero_stage + 1, 4):
        trials.append((f"deepspeed.zero_stage={stage}", {"deepspeed": {"zero_stage": stage}}))
    if ds.zero_stage >= 1 and not ds.offload_optimizer:
        trials.append(("deepspeed.offload_optimizer=true (GPU jobs)", {"deepspeed": {"offload_optimizer": True}}))
    for workers in (2 * sc.num_workers, 4 * sc.num_workers, 8 * sc.num_workers):
        trials.append((f"scaling.num_workers={workers}", {"scaling": {"num_workers": workers}}))
    if ds.micro_batch_size > 1:
        half = max(1, ds.micro_batch_size // 2)
        trials.append((f"deepspeed.micro_batch_size={half} with gradient_accumulation_steps="
                       f"{ds.gradient_accumulation_steps * 2}",
                       {"deepspeed": {"micro_batch_size": half,
                                      "gradient_accumulation_steps": ds.gradient_accumulation_steps * 2}}))
    if not ds.activation_checkpointing and spec.workload == "gpt":
        trials.append(("deepspeed.activation_checkpointing=true", {"deepspeed": {"activation_checkpointing": True}}))
    fixes: list[str] = []
    for label, change in trials:
        if label.startswith("scaling.num_workers") and any(f.startswith("scaling.num_workers") for f in fixes):
            continue  # the smallest worker count that fits is the useful one
        data = spec.model_dump(mode="json")
        for section, values in change.items():
            data[section] = {**data[section], **values}
        data["deepspeed"]["global_batch_size"] = None
        try:
            alt = JobSpec(**data)
            alt_est = estimate(alt)
        except (ValueError, OrchError):
            continue
        need = alt_est.on("host") if sc.use_gpu and not label.endswith("(GPU jobs)") else alt_est.total
        if need <= budget:
            fixes.append(f"{label} (~{_gib(need)} per worker)")
    return fixes[:5]


def _merged(est: Estimate) -> list[Component]:
    """One line per component name (buffers can come from two places)."""
    merged: dict[str, int] = {}
    for c in est.components:
        merged[c.name] = merged.get(c.name, 0) + c.bytes
    return [Component(name, value, "") for name, value in merged.items()]


def _gib(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"
