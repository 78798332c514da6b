"""Cross-rank reduction shared by the workloads' evaluation."""

import torch
import torch.distributed as dist


def mean_across_ranks(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Averages each metric over all ranks in one collective (every rank must call it).

    The tensor lives on `device` because the backend dictates it: NCCL reduces CUDA tensors, gloo CPU ones.
    Without an initialised process group (a single plain-torch process) the values are already the mean.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return dict(metrics)
    values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= dist.get_world_size()
    return dict(zip(metrics, values.tolist(), strict=True))
