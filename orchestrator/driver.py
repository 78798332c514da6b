"""The Ray job's entrypoint: build a TorchTrainer from the stored spec, run it, write result.json.

Runs inside the cluster (`python -m orchestrator.driver --job-id ID --store URI`). Ray Train restarts
the worker group on worker death up to `failure.max_restarts` times; each restart resumes from the
newest verified checkpoint (see WorkerContext.restore). result.json is written last, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback

import yaml

from orchestrator.checkpoints import list_checkpoints
from orchestrator.launch import load_secrets_file
from orchestrator.metrics_log import METRICS_KEY, read_jsonl
from orchestrator.spec import JobSpec, parse_spec
from orchestrator.storage import ObjectStore, open_store
from orchestrator.store import utc_now

WORKER_GROUP_START_TRIES = 3


def build_trainer(spec: JobSpec, job_id: str, store_uri: str):  # -> TorchTrainer (ray imported lazily)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.worker import run_worker

    scaling = spec.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.worker_gpus
    return TorchTrainer(
        run_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "job_id": job_id, "store": store_uri},
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
        ),
    )


def summarize(store: ObjectStore, status: str, reason: str = "") -> dict:
    rows = read_jsonl(store, METRICS_KEY)
    final = next((r for r in reversed(rows) if r.get("final")), rows[-1] if rows else {})
    committed = [c.step for c in list_checkpoints(store) if c.committed]
    return {
        "status": status, "reason": reason, "finished_at": utc_now(),
        "final_metrics": final, "first_loss": next((r["loss"] for r in rows if "loss" in r), None),
        "last_step": max((r.get("step", 0) for r in rows), default=0),
        "attempts": len(store.list("attempts/")), "checkpoints": committed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator.driver")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--store", required=True, help="the job's storage prefix URI")
    args = parser.parse_args(argv)
    load_secrets_file()
    store = open_store(args.store)
    spec = parse_spec(yaml.safe_load(store.get_bytes("spec.yaml")), source=f"job {args.job_id} spec")
    try:
        build_trainer(spec, args.job_id, args.store).fit()
    except Exception as exc:  # the job failed for good: say why in result.json, then exit non-zero
        traceback.print_exc()
        reason = _root_cause(exc)
        # Printed first: if storage itself is what failed, this line (which Ray keeps with the job) is the verdict.
        print(f"{VERDICT_PREFIX}{reason}", file=sys.stderr, flush=True)
        store.put_bytes("result.json", json.dumps(summarize(store, "FAILED", reason), indent=2).encode())
        return 1
    store.put_bytes("result.json", json.dumps(summarize(store, "SUCCEEDED"), indent=2).encode())
    print(f"orch: job {args.job_id} SUCCEEDED")
    return 0


VERDICT_PREFIX = "orch: job FAILED: "


def verdict_from_logs(text: str) -> str | None:
    """The driver's own FAILED line, if Ray's job message (which carries the log tail) has one."""
    lines = [line for line in text.splitlines() if line.startswith(VERDICT_PREFIX)]
    return lines[-1].removeprefix(VERDICT_PREFIX).strip() if lines else None


def _root_cause(exc: BaseException) -> str:
    """Ray wraps worker errors a few levels deep; the innermost message is the useful one."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:1000]


if __name__ == "__main__":
    sys.exit(main())
