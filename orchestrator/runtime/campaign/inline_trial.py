"""A single-worker CPU trial trains in its own Tune process: no Ray Train worker group to start.

A trial with one worker gets nothing from a worker group but its cost: a Train controller actor, a worker actor
(a fresh Python process that imports torch and DeepSpeed again), a placement group and a rendezvous, paid by every
trial of a campaign whose trials train for seconds. Instead the trial calls the very `run_worker` a Ray Train
worker runs, in its own process, inside a one-process gloo group: DeepSpeed, checkpoints, restore and metrics are
a job's. Tune holds the trial's CPUs for it (the driver asks Tune for the worker's resources), and hands the process
on to the next trial, so torch, DeepSpeed and the workload are imported once per process rather than per trial.

Tune's report from a function trainable is synchronous: it returns only once Tune asks for the next result, and
raises SystemExit there when Tune stopped the trial. A scheduler's decision therefore takes effect at the report it
was made at, with no decision gate; the SystemExit ends training through the workload's loop like any exception.
"""

from __future__ import annotations

import gc
import os
import socket
from typing import Any

import torch.distributed as dist

from orchestrator.core.spec import JobSpec
from orchestrator.runtime.worker import ReportFn, run_worker


class OneProcessContext:
    """What WorkerContext asks Ray Train's context: the one process is rank 0 of 1 on its node."""

    def get_world_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 1

    def get_local_rank(self) -> int:
        return 0

    def get_local_world_size(self) -> int:
        return 1


def join_one_process_group() -> None:
    """A gloo process group of this process alone (an in-memory store: no port to agree on), once per process.

    DeepSpeed wraps an initialised group as it wraps Ray Train's. It stays for the process's life: DeepSpeed caches
    groups it derives from it (its clone of the world group), and Tune hands the process on to later trials. The
    launcher variables are set as well: without them DeepSpeed's init_distributed goes looking for an MPI launcher."""
    if dist.is_initialized():
        return
    with socket.socket() as probe:  # a free port, in case anything still reads MASTER_PORT
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def train_in_this_process(spec: JobSpec, job_id: str, store_uri: str, report: ReportFn) -> None:
    """Train the trial's job here, from its store's newest verified checkpoint; `report` gets every metrics row."""
    config: dict[str, Any] = {"spec": spec.model_dump(mode="json"), "job_id": job_id, "store": store_uri}
    join_one_process_group()
    try:
        run_worker(config, train_context=OneProcessContext(), report=report)
    finally:
        gc.collect()  # Tune may hand this process to the next trial: free this one's engine now
