"""What runs inside each Ray Train worker: DeepSpeed setup, restore, metrics, checkpoints.

Workloads import only this module. `run_worker` is the TorchTrainer's train_loop_per_worker: it builds
a `WorkerContext` and calls the workload's `train(ctx)`, whose loop stays short because everything
that is the same for every workload lives here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from orchestrator.core import checkpoints
from orchestrator.core.deepspeed_config import build_deepspeed_config
from orchestrator.core.metrics_log import MetricsLog
from orchestrator.core.noise import silence_known_worker_warnings
from orchestrator.core.run import rank_key, utc_now, write_attempt
from orchestrator.core.secrets import load_secrets_file
from orchestrator.core.spec import JobSpec
from orchestrator.runtime.build_locks import clear_stale_build_locks
from orchestrator.runtime.checkpoint_writer import (
    CheckpointWriter,
    discard_after,
    download_for_load,
    restore_candidates,
)
from orchestrator.runtime.host_memory import pin_mmap_threshold
from orchestrator.runtime.mapped_loads import mapped_torch_loads
from orchestrator.runtime.reshard import convert_to_universal, saved_world_size, universal_config
from orchestrator.runtime.shm_buffers import release_own_buffer, sweep_stale_buffers
from orchestrator.runtime.step_metrics import ThroughputWindow, health_metrics
from orchestrator.storage import open_store

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_workload(workload: str) -> Any:
    from orchestrator.workloads import BUILTIN_WORKLOADS, load

    return load(BUILTIN_WORKLOADS[workload].entrypoint if workload in BUILTIN_WORKLOADS else workload)


def run_worker(config: dict[str, Any], train_context: Any = None, report: ReportFn | None = None) -> None:
    """train_loop_per_worker: config = {"spec": <spec dict>, "job_id": str, "store": <job store URI>, "gate": a
    DecisionGate or None, "ray_reports": bool}.

    A campaign trial that trains in its own process (runtime/campaign/inline_trial.py) passes the rank facts
    (`train_context`) and where each report goes (`report`) itself; a Ray Train worker gets the rank facts from
    Ray Train and reports to it only where "ray_reports" says so (see driver.build_trainer)."""
    load_secrets_file()
    silence_known_worker_warnings()
    clear_stale_build_locks()
    sweep_stale_buffers()
    if train_context is None:
        import ray.train

        train_context = ray.train.get_context()
        report = report_to_ray if config.get("ray_reports") else None
    ctx = WorkerContext(JobSpec(**config["spec"]), config["job_id"], config["store"], train_context,
                        gate=config.get("gate"), report=report)
    try:
        resolve_workload(ctx.spec.workload)(ctx)
    except StoppedByScheduler as stop:  # a campaign's scheduler ended this trial at a rung: not an error
        print(f"orch: {stop}", flush=True)
    except Exception:
        # Printed here, it is in the log under this worker's pid, so `orch logs --errors` names the rank that
        # raised; Ray Train only hands the exception to the driver.
        traceback.print_exc()
        raise
    finally:
        ctx.close()


def data_generator(seed: int, step: int, micro: int, rank: int, split: str) -> torch.Generator:
    """Batches are a pure function of (seed, step, micro, rank, split): resume sees the same data, and
    anyone can replay a job's exact evaluation batches (hash() of a tuple of ints is not randomised)."""
    split_id = {"train": 0, "val": 1}.get(split, 2)
    return torch.Generator().manual_seed(hash((seed, step, micro, rank, split_id)) % 2**63)


def build_optimizer(model: torch.nn.Module, spec: JobSpec) -> torch.optim.Optimizer:
    """AdamW with the fused kernel, on CPU as on CUDA: one elementwise pass per tensor instead of several.

    Besides the speed (~5x on CPU), the unfused update allocates two temporaries the size of the tensor it
    updates (sqrt of exp_avg_sq and the division), and under ZeRO-1/2 that tensor is the worker's whole flat fp32
    partition: GBs at a billion parameters. Not with ZeRO-Offload, where DeepSpeed steps the optimizer on its
    own host copies of the parameters.
    """
    train = spec.train
    fused = not spec.deepspeed.offload_optimizer
    return torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay, betas=(0.9, 0.95),
                             fused=fused)


ReportFn = Callable[[dict[str, Any]], None]


def report_to_ray(row: dict[str, Any]) -> None:
    """Ray Train (and Ray Tune's schedulers, through it) see the rows of the metrics log; every rank must call it."""
    import ray.train

    ray.train.report(row)


class StoppedByScheduler(Exception):
    """Raised out of `after_step` on every rank when a campaign's scheduler stopped the trial at a rung."""


class WorkerContext:
    def __init__(self, spec: JobSpec, job_id: str, store_uri: str, train_context: Any, gate: Any = None,
                 report: ReportFn | None = None):
        self.spec, self.job_id = spec, job_id
        self.gate = gate  # a campaign trial's DecisionGate (orchestrator.runtime.decision_gate), else None
        self._report = report  # None: the rows go only to the metrics log
        if spec.deepspeed.zero_stage == 3 and not spec.scaling.use_gpu:
            # Before the model exists, so its tensors never fragment the heap. Only where memory binds (ZeRO-3
            # on CPU): an mmap per large tensor costs a small ZeRO-1 GPT ~25% of its tokens/s.
            pin_mmap_threshold()
        self.rank = train_context.get_world_rank()
        self.world_size = train_context.get_world_size()
        self.local_rank = train_context.get_local_rank()
        if spec.scaling.use_gpu:
            import ray.train.torch

            self.device = ray.train.torch.get_device()
        else:
            self.device = torch.device("cpu")
            # DeepSpeed's CPU accelerator counts its devices by running `numactl --hardware` unless LOCAL_SIZE
            # says it (DeepSpeed's own launcher sets it); ZeRO-3 asks on every gradient bucket it reduces.
            os.environ.setdefault("LOCAL_SIZE", str(train_context.get_local_world_size()))
        self.dtype = DTYPES[spec.deepspeed.precision]
        self.store = open_store(store_uri)
        self.local_root = Path(tempfile.gettempdir()) / "orch-checkpoints" / job_id
        self.writer = CheckpointWriter(self.store, self.rank, self.world_size, self.local_root,
                                       spec.spec_hash(), spec.checkpoint)
        self.metrics = MetricsLog(self.store, enabled=self.rank == 0)
        self._window = ThroughputWindow()
        self.engine: Any = None
        self._restore_plan: tuple[list[int], int | None] | None = None
        torch.manual_seed(spec.train.seed)
        np.random.seed(spec.train.seed % 2**32)
        random.seed(spec.train.seed)

    # ---- model and engine --------------------------------------------------------------------------
    def model_init(self) -> contextlib.AbstractContextManager:
        """ZeRO-3 partitions parameters as the model is built, so no rank ever holds the whole model."""
        if self.spec.deepspeed.zero_stage == 3:
            import deepspeed

            # zero.Init reads the world size from deepspeed.comm, which must wrap Ray Train's process group first.
            deepspeed.init_distributed(dist_backend="nccl" if self.spec.scaling.use_gpu else "gloo")
            return deepspeed.zero.Init(config_dict_or_path=build_deepspeed_config(self.spec, self.world_size),
                                       remote_device="cpu" if self.spec.deepspeed.offload_param else None)
        return contextlib.nullcontext()

    def build_engine(self, model: torch.nn.Module) -> Any:
        import deepspeed

        optimizer = build_optimizer(model, self.spec)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=self.lr_multiplier)
        config = build_deepspeed_config(self.spec, self.world_size)
        # Whether the checkpoint to restore was written by another number of workers decides how this engine
        # loads (DeepSpeed reads `load_universal` from the config it was built with), so it is asked first.
        self._restore_plan = self._plan_restore()
        if self._restore_plan[1] not in (None, self.world_size):
            config = universal_config(config)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
        )
        self.writer.attach(self.engine, optimizer)
        if dist.is_initialized():  # every rank has mapped its peers' shm buffers: their names can go
            dist.barrier()
            release_own_buffer(self.rank)
        self._write_shard_stats(model)
        self._measure_model_states_at_first_update()
        return self.engine

    def _write_shard_stats(self, model: torch.nn.Module) -> None:
        """What this rank actually holds: shows ZeRO-3's ~1/N parameter sharding, feeds estimator checks."""
        params = list(model.parameters())
        # Under ZeRO-3 a parameter's own tensor is empty outside forward; ds_tensor is this rank's shard.
        local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
        total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params)
        self.store.put_bytes(rank_key(self.rank), _json({
            "rank": self.rank, "world_size": self.world_size, "zero_stage": self.spec.deepspeed.zero_stage,
            "params_total": total, "params_local": local, "pid": os.getpid(), "hostname": socket.gethostname(),
        }))

    def _measure_model_states_at_first_update(self) -> None:
        """Add what this rank holds at the end of the first optimizer update to its rank file (see memstats)."""
        from orchestrator.runtime.memstats import measure_at_first_update

        def report(memory: dict[str, int]) -> None:
            key = rank_key(self.rank)
            self.store.put_bytes(key, _json({**json.loads(self.store.get_bytes(key)), "memory": memory}))

        measure_at_first_update(self.engine, report)

    def lr_multiplier(self, step: int) -> float:
        """Linear warmup, then constant / cosine / linear decay to min_lr_ratio at the last step."""
        train = self.spec.train
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        if train.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if train.lr_schedule == "cosine" else 1 - progress
        return train.min_lr_ratio + (1 - train.min_lr_ratio) * decay

    # ---- data and randomness ---------------------------------------------------------------------------
    def generator(self, step: int, micro: int = 0, split: str = "train") -> torch.Generator:
        if split == "train":
            # Keyed by the micro batch's place in the global batch, not by (rank, micro): a job resumed on another
            # worker count with the same global batch (workers x accumulation) trains on the same samples.
            # With no accumulation this is (0, rank), the key it always had.
            return data_generator(self.spec.train.seed, step, 0, micro * self.world_size + self.rank, split)
        return data_generator(self.spec.train.seed, step, micro, self.rank, split)

    def should_eval(self, step: int) -> bool:
        every = self.spec.train.eval_every
        return step == self.spec.train.steps or (every > 0 and step % every == 0)

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """Around an evaluation: its time stays out of tokens_per_s/step_time_s (the row's eval_time_s)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._window.leave_out(time.perf_counter() - started)

    def all_reduce_mean(self, value: float) -> float:
        if not dist.is_initialized() or self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL reduces only GPU tensors
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    # ---- restore ---------------------------------------------------------------------------------------
    def _plan_restore(self) -> tuple[list[int], int | None]:
        """(committed steps to try, newest first; the world size that wrote the newest, None if none)."""
        plan: tuple[list[int], int | None] = ([], None)
        if self.rank == 0:
            candidates = restore_candidates(self.store)
            plan = (candidates, saved_world_size(self.store, candidates[0]) if candidates else None)
        return self._broadcast(plan)  # every rank must load the same step, the same way

    def restore(self, engine: Any) -> int:
        """Load the newest verified checkpoint (model, optimizer, LR schedule, RNG). Returns its step, or 0.

        One written by another number of workers is resharded for this one (see reshard.py)."""
        candidates, saved_world = self._restore_plan or self._plan_restore()
        universal = bool(engine.load_universal_checkpoint())
        if saved_world not in (None, self.world_size) and not universal:
            raise RuntimeError(f"checkpoint step {candidates[0]} was written by {saved_world} workers; to load it "
                               f"on {self.world_size}, build the engine with WorkerContext.build_engine")
        restored_step = 0
        for step in candidates:
            root = download_for_load(self.store, step, self.local_root, self.rank)
            if self._all_ranks(root is not None):
                tag = checkpoints.step_tag(step)
                load_root = root
                if universal:
                    if self.rank == 0:
                        print(f"orch: resharding checkpoint step {step} from {saved_world} to {self.world_size} "
                              "workers (DeepSpeed universal checkpoint)", flush=True)
                    load_root = convert_to_universal(root / tag)
                with mapped_torch_loads():  # no second in-memory copy of the optimizer states
                    _, client_state = engine.load_checkpoint(str(load_root), tag=tag)
                self._set_rng(client_state["rng"])
                shutil.rmtree(root, ignore_errors=True)
                shutil.rmtree(load_root, ignore_errors=True)
                restored_step = step
                break
        self.metrics.resume_from(restored_step)
        if self.rank == 0:
            discard_after(self.store, restored_step)
            write_attempt(self.store, restored_step)
        self._window.reset()
        return restored_step

    def _broadcast(self, value: Any) -> Any:
        if not dist.is_initialized() or self.world_size == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def _all_ranks(self, ok: bool) -> bool:
        if not dist.is_initialized() or self.world_size == 1:
            return ok
        flag = torch.tensor([1 if ok else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    @staticmethod
    def _rng_state() -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}

    @staticmethod
    def _set_rng(state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])

    # ---- per step ----------------------------------------------------------------------------------------
    def after_step(self, engine: Any, step: int, metrics: dict[str, float]) -> None:
        """Report metrics and checkpoint as the spec says. Collective: every rank calls it every step."""
        self._window.add(metrics)
        reporting = step == 1 or step % self.spec.train.report_every == 0 or "eval_loss" in metrics
        ckpt = self.spec.checkpoint
        checkpointing = ckpt.every_steps > 0 and step % ckpt.every_steps == 0
        if not (reporting or checkpointing):
            return
        # Loss is averaged over ranks and throughput over the steps since the last report.
        row: dict[str, Any] = {"step": step, **metrics, **self._window.rates(self.world_size)}
        if self._window.left_out:
            row["eval_time_s"] = round(self._window.left_out, 3)
        # The next window starts here, so it pays for this report (all-reduce, metrics file, Ray's report):
        # the throughput users see includes what orchestration costs them.
        self._window.reset()
        row["loss"] = self.all_reduce_mean(float(metrics["loss"]))
        row |= health_metrics(engine, self.spec, row, self.world_size)  # grad_norm, mfu
        row["time"] = utc_now()
        self._note_settled_checkpoints()
        self.metrics.add(row, flush=True, background=True)  # a storage outage must not hold up training
        if self.rank == 0:  # one dated line per report: progress in the log, and `orch logs --since` anchors on it
            print(f"orch: step {step}/{self.spec.train.steps} loss {row['loss']:.4g} ({row['time']})", flush=True)
        if self._report is not None:
            self._report({k: v for k, v in row.items() if isinstance(v, (int, float))})
        if checkpointing:
            self.save(engine, step, row)
            self._window.reset()  # the save stall is measured on its own (checkpoint_stall_s), not as throughput
        if self.gate is not None and step in self.gate.steps:
            self._await_decision(step)

    def _await_decision(self, step: int) -> None:
        """Collective: every rank waits here until the campaign's scheduler has judged this report."""
        go_on = self._all_ranks(self.gate.wait(step) if self.rank == 0 else True)
        self._window.reset()  # waiting is not training: throughput starts again after it
        if not go_on:
            raise StoppedByScheduler(f"the campaign's scheduler stopped this trial at step {step}")

    def save(self, engine: Any, step: int, metrics: dict[str, Any]) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.writer.save(engine, step, numeric, {"step": step, "rng": self._rng_state()})
        self._note_settled_checkpoints()

    def _note_settled_checkpoints(self) -> None:
        for step, stall_s, write_s in self.writer.settled():
            self.metrics.note_checkpoint(step, stall_s, write_s)

    def finish(self, final_metrics: dict[str, float]) -> dict[str, float]:
        """Final checkpoint (if the policy asks), wait for uploads to commit, write the last metrics."""
        step = self.spec.train.steps
        self._record_training_peak_rss()
        if self.spec.checkpoint.at_end and self.writer.last_saved_step != step and self.engine is not None:
            self.save(self.engine, step, {**self.metrics.latest(), **final_metrics})
        self.writer.close()
        self._note_settled_checkpoints()
        self.metrics.add({"step": step, "final": True, **final_metrics}, flush=True)
        return final_metrics

    def _record_training_peak_rss(self) -> None:
        """This rank's peak RSS over training (before the final checkpoint), the figure `orch estimate` predicts."""
        key = f"workers/rank-{self.rank:05d}.json"
        with contextlib.suppress(Exception):  # a missing rank file (custom engine setup) loses only this figure
            data = json.loads(self.store.get_bytes(key))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
            self.store.put_bytes(key, _json({**data, "peak_rss_training": peak}))

    def close(self) -> None:
        self.writer.close()

    def read_bytes(self, uri: str) -> bytes:
        """Read a user data file from a local path or any storage URI."""
        if "://" not in uri or uri.startswith("file://"):
            return Path(uri.removeprefix("file://")).expanduser().read_bytes()
        parent, _, name = uri.rpartition("/")
        return open_store(parent).get_bytes(name)


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()
