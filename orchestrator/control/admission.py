"""Admission, checked at submit: could the worker group ever start on this cluster, and does one worker fit
the memory it gets?

The estimate itself is pure (core/estimate.py); this module compares it with the cluster (the CPUs and GPUs
it has or its autoscaler can add, see autoscaling.py; its nodes' memory) or a budget from the flag or
ORCH_WORKER_MEMORY_GB, and refuses with the numbers and what would fit.
"""

from __future__ import annotations

import math
import os
from typing import Any

from orchestrator.control.autoscaling import Capacity
from orchestrator.control.cluster_address import ClusterUnavailable, fetch_nodes
from orchestrator.core.errors import OrchError
from orchestrator.core.estimate import Component, Estimate, GiB, builtin_workload, estimate
from orchestrator.core.spec import JobSpec


def check_budget(gb: float | None, source: str = "--memory-per-worker") -> None:
    """A budget is a positive, finite number of GiB (float() also takes 'nan' and 'inf')."""
    if gb is not None and not (math.isfinite(gb) and 0 < gb < 2**40):
        raise OrchError(f"{source} must be a positive number of GiB (e.g. 8), got {gb:g}.")


def worker_group_needs(spec: JobSpec) -> tuple[float, float]:
    """(CPUs, GPUs) the whole worker group of `spec` reserves."""
    scaling = spec.scaling
    return scaling.num_workers * scaling.cpus_per_worker, scaling.num_workers * scaling.worker_gpus


def check_fits_totals(spec: JobSpec, capacity: Capacity, who: str, outcome: str, fields: str) -> None:
    """Refuse a worker group bigger than the cluster can ever be: its alive nodes, plus what its autoscaler may
    add. It would wait in the queue forever. One that fits only after scale-up is admitted and waits for nodes."""
    need_cpu, need_gpu = worker_group_needs(spec)
    now, ceiling = capacity.now, capacity.ceiling
    if need_cpu <= ceiling["CPU"] and need_gpu <= ceiling["GPU"]:
        return
    head = f"{who} needs {need_cpu:g} CPUs and {need_gpu:g} GPUs ({spec.scaling.num_workers} workers), but "
    if not capacity.autoscaler:
        raise OrchError(
            f"{head}the whole cluster has {now['CPU']:g} CPUs and {now['GPU']:g} GPUs, so {outcome}. Lower {fields}, "
            "or use a bigger cluster (--address)."
        )
    if not capacity.room and capacity.unknown:
        raise OrchError(f"{head}the cluster has {now['CPU']:g} CPUs and {now['GPU']:g} GPUs now, and "
                        f"{'; '.join(capacity.unknown)}.")
    unknown = f" ({'; '.join(capacity.unknown)})" if capacity.unknown else ""
    raise OrchError(
        f"{head}the cluster has {now['CPU']:g} CPUs and {now['GPU']:g} GPUs now and its autoscaler can add at most "
        f"{capacity.can_add()}{unknown}, so {outcome} even at its largest. Lower {fields}, or raise the autoscaler's "
        "max_workers (or add a bigger node type)."
    )


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
        check_budget(override_gb, source)
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
    if not ds.activation_checkpointing and builtin_workload(spec).activation_checkpointing:
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
