"""What one rank actually holds in model states, measured from the live DeepSpeed engine (worker side).

Called at the end of the first optimizer update (`measure_at_first_update`): the one moment when parameters,
gradient partitions, fp32 master copies and Adam moments all exist at once, which is the model-state peak
the estimator in orchestrator/core/estimate.py predicts. ZeRO-3 steps the client optimizer once per sub group
(`sub_group_size`), each time on that sub group's fp32 partition only, so the end of the update is the
last of those calls, when the last sub group's fp32 gradient still exists. Every tensor is counted once
per storage (views into DeepSpeed's flat buffers share one), and each storage goes to the first
component that claims it, in this order:

- optimizer_states: the client optimizer's state (AdamW exp_avg, exp_avg_sq, step);
- params: the model's parameter storages (under ZeRO-3: this rank's ds_tensor shard plus any
  parameter DeepSpeed keeps whole, the "persistent" small ones);
- master: parameters the client optimizer updates that are not model storages, and ZeRO's fp32 partitions;
- grads: `.grad` of both, and any ZeRO optimizer attribute whose name mentions "grad";
- buffers: every other tensor the ZeRO optimizer object graph holds (reduce buckets, offload staging).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any

import torch

COMPONENTS = ("params", "grads", "master", "optimizer_states", "buffers")
_MAX_DEPTH = 6
# Where DeepSpeed's optimizer wrappers keep the fp32 master partitions: ZeRO-3, ZeRO-1/2, bf16 (ZeRO-0).
_MASTER_ATTRS = ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition")


class _Ledger:
    def __init__(self) -> None:
        self.owner: dict[int, str] = {}
        self.bytes = dict.fromkeys(COMPONENTS, 0)

    def claim(self, tensor: Any, component: str) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() == 0 or key in self.owner:
            return
        self.owner[key] = component
        self.bytes[component] += storage.nbytes()


def model_state_bytes(engine: Any) -> dict[str, int]:
    """Bytes held by this process, per component (see the module docstring), plus peak RSS."""
    ledger = _Ledger()
    wrapper = engine.optimizer
    client = getattr(wrapper, "optimizer", wrapper)  # ZeRO / mixed-precision wrappers keep the client inside
    for state in client.state.values():
        for value in state.values():
            ledger.claim(value, "optimizer_states")
    model_params = list(engine.module.parameters())
    for p in model_params:
        ledger.claim(getattr(p, "ds_tensor", None), "params")
        ledger.claim(p.data, "params")
    optimized = [p for group in client.param_groups for p in group["params"]]
    for p in optimized:
        ledger.claim(p.data, "master")
    for attr in _MASTER_ATTRS:
        for p in getattr(wrapper, attr, None) or []:
            ledger.claim(p, "master")
            ledger.claim(getattr(p, "grad", None), "grads")
    for p in model_params + optimized:
        ledger.claim(p.grad, "grads")
    if wrapper is not client:
        _walk(wrapper, "", ledger, set(), 0)
    result = dict(ledger.bytes)
    result["model_states"] = sum(result[c] for c in ("params", "grads", "master", "optimizer_states"))
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return result


def client_steps_per_update(engine: Any) -> int:
    """How many times one engine.step() steps the client optimizer.

    ZeRO-3 steps it once per sub group, ZeRO-1/2 once per parameter group, everything else once.
    """
    wrapper = engine.optimizer
    if hasattr(wrapper, "fp32_partitioned_groups_flat"):
        return max(1, len(wrapper.fp16_groups))
    if hasattr(wrapper, "single_partition_of_fp32_groups"):
        return max(1, len(wrapper.bit16_groups))
    return 1


def measure_at_first_update(engine: Any, report: Callable[[dict[str, int]], None]) -> None:
    """Call `report(model_state_bytes(engine))` once, at the end of the first optimizer update."""
    client = getattr(engine.optimizer, "optimizer", engine.optimizer)
    calls = client_steps_per_update(engine)
    sub_group_grads: list[int] = []  # fp32 gradient bytes of the sub group each call stepped

    def hook(*_: Any) -> None:
        if len(sub_group_grads) >= calls:
            return  # torch cannot drop a hook while running it: later updates do nothing
        sub_group_grads.append(_stepped_grad_bytes(client))
        if len(sub_group_grads) == calls:
            memory = model_state_bytes(engine)
            # The last sub group's fp32 gradient is what exists now; the largest one's existed at its own step,
            # with everything else here: that is the peak the estimate predicts.
            memory["grads"] += max(sub_group_grads) - sub_group_grads[-1]
            memory["model_states"] += max(sub_group_grads) - sub_group_grads[-1]
            report(memory)

    client.register_step_post_hook(hook)


def _stepped_grad_bytes(client: Any) -> int:
    """Bytes of the gradients of the parameters the client optimizer just stepped (ZeRO-3: one sub group)."""
    return sum(p.grad.untyped_storage().nbytes() for group in client.param_groups for p in group["params"]
               if p.grad is not None)


def _walk(obj: Any, name: str, ledger: _Ledger, seen: set[int], depth: int) -> None:
    """Tensors reachable from DeepSpeed's optimizer objects; attribute names decide grads vs buffers."""
    if depth > _MAX_DEPTH or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        ledger.claim(obj, "grads" if "grad" in name else "buffers")
        if obj.is_leaf and obj.grad is not None:
            ledger.claim(obj.grad, "grads")
        return
    if isinstance(obj, dict):
        children = obj.values()
    elif isinstance(obj, (list, tuple, set)):
        children = obj
    elif type(obj).__module__.startswith("deepspeed") and hasattr(obj, "__dict__"):
        for attr, value in vars(obj).items():
            if not isinstance(value, torch.nn.Module):  # the model is counted above, the client optimizer too
                _walk(value, attr, ledger, seen, depth + 1)
        return
    else:
        return
    for child in children:
        _walk(child, name, ledger, seen, depth + 1)
