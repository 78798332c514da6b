"""The Ray job's entrypoint: build a TorchTrainer from the stored spec, run it, write result.json.

Runs inside the cluster (`python -m orchestrator.runtime.driver --job-id ID --store URI`). Ray Train restarts
the worker group on worker death up to `failure.max_restarts` times; each restart resumes from the
newest verified checkpoint (see WorkerContext.restore). result.json is written last, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from typing import Any

from orchestrator.core.run import read_spec, root_cause, verdict_line, write_result
from orchestrator.core.secrets import load_secrets_file
from orchestrator.core.spec import JobSpec, parse_spec
from orchestrator.runtime.tracking_runs import start_job_tracking
from orchestrator.storage import open_store

WORKER_GROUP_START_TRIES = 3


def build_trainer(spec: JobSpec, job_id: str, store_uri: str, gate: Any = None,
                  ray_reports: bool = False):  # -> TorchTrainer (lazy ray)
    """The job's TorchTrainer; `gate` (a DecisionGate) makes a campaign trial's workers wait at its rungs.

    `ray_reports`: the workers hand each metrics row to `ray.train.report` (a campaign trial's rows feed Tune
    through it). A job's rows go only to its metrics log: nothing reads Ray Train's copy, and each report
    waits for Ray Train's next poll of the workers."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.runtime.worker import run_worker

    scaling = spec.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.worker_gpus
    return TorchTrainer(
        run_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "job_id": job_id, "store": store_uri, "gate": gate,
                           "ray_reports": ray_reports},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=resources, placement_strategy=scaling.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name=job_id,
            # Ray Train's own storage only holds its bookkeeping; our checkpoints go to the job store.
            storage_path=os.path.join(tempfile.gettempdir(), "orch-ray-results"),
            # Ray Train retries a worker group that cannot start forever by default; a job that can never get
            # its workers must fail loudly instead of hanging (each try waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S).
            failure_config=FailureConfig(max_failures=spec.failure.max_restarts,
                                         controller_failure_limit=WORKER_GROUP_START_TRIES),
            # Ray starts its workers at niceness 15, below every other process of the node (its own daemons
            # included), which then preempt training at each wake-up. Training is what the node is for.
            worker_runtime_env={"env_vars": {"RAY_worker_niceness": "0"}},
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator.runtime.driver")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--store", required=True, help="the job's storage prefix URI")
    args = parser.parse_args(argv)
    load_secrets_file()
    store = open_store(args.store)
    spec = parse_spec(read_spec(store), source=f"job {args.job_id} spec")
    # Mirrors metrics to the experiment tracker from here, on a thread: the workers never wait for it.
    tracking = start_job_tracking(spec, args.job_id, store)
    try:
        build_trainer(spec, args.job_id, args.store).fit()
    except Exception as exc:  # the job failed for good: say why in result.json, then exit non-zero
        traceback.print_exc()
        reason = root_cause(exc)
        # Printed first: if storage itself is what failed, this line (which Ray keeps with the job) is the verdict.
        print(verdict_line(reason), file=sys.stderr, flush=True)
        if tracking is not None:
            tracking.finish("FAILED")
        write_result(store, "FAILED", reason)
        return 1
    if tracking is not None:
        tracking.finish("SUCCEEDED")  # before result.json, which reports what the tracker received
    write_result(store, "SUCCEEDED")
    print(f"orch: job {args.job_id} SUCCEEDED")
    return 0



if __name__ == "__main__":
    sys.exit(main())
