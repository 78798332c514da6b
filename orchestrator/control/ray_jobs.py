"""Turn a job record into a Ray job (the Ray Jobs API, so `ray job list` shows it), and talk to it.

The Ray job's entrypoint is `python -m orchestrator.runtime.driver`, which builds the TorchTrainer inside the
cluster. Secrets never travel in the Ray job's runtime_env (the Jobs API shows it to anyone who
asks): on the embedded cluster they go through a 0600 file that only the driver and workers read;
on a remote cluster the nodes' own credentials (instance role, Kubernetes secret) are used.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.control.cluster_address import ClusterUnavailable, auth_headers
from orchestrator.control.ray_retry import RayTransientError, call_with_retry, transient_reason
from orchestrator.control.settings import extensions_dir
from orchestrator.core.errors import OrchError
from orchestrator.core.secrets import SECRETS_FILE_ENV

# Non-secret settings that tell workers how to reach storage; forwarded as they are.
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "ORCH_S3_ADDRESSING_STYLE", "ORCH_STORAGE_RETRIES",
)
# Settings that name files or profiles on this machine: meaningful only to a cluster running on it.
SAME_MACHINE_ENV = ("AWS_PROFILE", "AWS_CA_BUNDLE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "ORCH_HOME")
T = TypeVar("T")
# How often Ray Train's controller polls its workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S). Each poll is an actor
# call into every worker, and a worker's ray.train.report() waits for the poll that collects the previous one.
# A job's workers never report to Ray Train (runtime/driver.py::build_trainer), so its poll only notices the end
# or a lost worker: once a second. At 0.1 s the polls took ~2% of a 2-core machine's CPU from training.
JOB_WORKER_POLL_S = 1.0
# A campaign's worker-group trials report every metrics row to Ray Train for Tune: poll fast so reports never wait.
TRIAL_WORKER_POLL_S = 0.1


def job_runtime_env(use_gpu: bool, secrets_file: Path | None, extra_env: dict[str, str],
                    working_dir: str | None, same_machine: bool = True, campaign: bool = False) -> dict[str, Any]:
    names = FORWARDED_ENV + SAME_MACHINE_ENV if same_machine else FORWARDED_ENV
    env = {k: os.environ[k] for k in names if os.environ.get(k)}
    env.update(extra_env)
    poll_s = TRIAL_WORKER_POLL_S if campaign else JOB_WORKER_POLL_S
    env.update({
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(poll_s)),
        "PYTHONUNBUFFERED": "1",
        # Plain logs: every rank's lines kept (Ray would merge look-alike lines of different workers into one,
        # losing which rank printed them; `orch logs` dedups repeated warnings itself), and no colour codes stored.
        "RAY_DEDUP_LOGS": "0",
        "RAY_COLOR_PREFIX": "0",
    })
    if same_machine:  # a path on this disk; a remote cluster keeps DeepSpeed's default cache
        env["TORCH_EXTENSIONS_DIR"] = str(extensions_dir())
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    if secrets_file is not None:
        env[SECRETS_FILE_ENV] = str(secrets_file)
    runtime_env: dict[str, Any] = {"env_vars": env}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    return runtime_env



def driver_entrypoint(module: str, id_flag: str, record_id: str, store_uri: str, local_cluster: bool) -> str:
    """`python -m <driver module> <id flag> ID --store URI`, the Ray job's command line."""
    # The embedded cluster runs our own interpreter; a remote cluster has its own `python` on PATH.
    python = sys.executable if local_cluster else "python"
    return " ".join(shlex.quote(p) for p in (python, "-m", module, id_flag, record_id, "--store", store_uri))


class RayJobs:
    """A thin wrapper over Ray's JobSubmissionClient with our error messages.

    Every call retries transient errors (connection refused or dropped, timeouts, 5xx, "try again later") for
    up to ORCH_RAY_RETRY_S seconds (see ray_retry.py). Once a call has spent that whole budget, later calls in
    the same process try once until one succeeds: a cluster that is down is not waited for again per job.
    """

    def __init__(self, dashboard_url: str):
        self.url = dashboard_url
        self._client: Any = None
        self._down = False

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            try:
                self._client = JobSubmissionClient(self.url, headers=auth_headers(self.url) or None)
            except Exception as exc:  # Ray raises ConnectionError/RuntimeError variants here
                error = ClusterUnavailable(f"Cannot reach the Ray Jobs API at {self.url}: {exc}. Check --address "
                                           "or ORCH_RAY_ADDRESS and that the cluster is up.")
                error.transient = transient_reason(exc) is not None  # e.g. not a 404: no Ray there to wait for
                raise error from None
        return self._client

    def _call(self, call: Callable[[], T], what: str, budget_s: float | None = None) -> T:
        try:
            result = call_with_retry(call, f"{what} at {self.url}", budget_s=0.0 if self._down else budget_s)
        except RayTransientError:
            self._down = True
            raise
        self._down = False
        return result

    def submit(self, submission_id: str, entrypoint: str, runtime_env: dict[str, Any],
               metadata: dict[str, str]) -> None:
        def submit_once() -> None:
            try:
                self.client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                       runtime_env=runtime_env, metadata=metadata, entrypoint_num_cpus=0)
            except RuntimeError as exc:
                # "already exists": a retried launch (or a retry of a submission whose answer was lost): Ray
                # already has it, never run it twice.
                if "already exists" not in str(exc):
                    raise

        try:
            self._call(submit_once, f"submitting {submission_id}")
        except ClusterUnavailable:
            raise  # transient or unreachable: the job stays queued and is submitted again later
        except RuntimeError as exc:
            raise OrchError(f"Ray refused job {submission_id}: {exc}") from None

    def status(self, submission_id: str, budget_s: float | None = None) -> tuple[str | None, str]:
        """(Ray status name or None if Ray does not know the job, Ray's message); `budget_s` overrides how long
        transient errors are retried."""
        def status_once() -> tuple[str | None, str]:
            try:
                info = self.client.get_job_info(submission_id)
            except RuntimeError as exc:
                if "does not exist" in str(exc) or "404" in str(exc):
                    return None, ""
                raise
            return info.status.value, info.message or ""

        return self._call(status_once, f"asking for the status of {submission_id}", budget_s)

    def stop(self, submission_id: str) -> None:
        def stop_once() -> None:
            try:
                self.client.stop_job(submission_id)
            except RuntimeError as exc:
                if "does not exist" not in str(exc):
                    raise

        self._call(stop_once, f"stopping {submission_id}")

    def logs(self, submission_id: str) -> str:
        return self._call(lambda: self.client.get_job_logs(submission_id), f"reading the logs of {submission_id}")

    def follow_logs(self, submission_id: str) -> Iterator[str]:
        import asyncio

        # tail_job_logs is async; a tiny loop turns it into a blocking iterator for the CLI. Connecting (up to
        # the first chunk) is retried; a stream that breaks later ends with its error, not with lines repeated.
        loop = asyncio.new_event_loop()
        try:
            agen: Any = None

            def first_chunk() -> str | None:
                nonlocal agen
                agen = self.client.tail_job_logs(submission_id)
                try:
                    return loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return None

            chunk = self._call(first_chunk, f"following the logs of {submission_id}")
            if chunk is None:
                return
            yield chunk
            while True:
                try:
                    yield loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.close()
