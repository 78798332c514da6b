"""The job manager: records, queue, launch, reconciliation with Ray and storage, cancel, resume.

There is no long-lived server. Every `orch` command calls `tick()`, which (1) reconciles the jobs Ray is
running with what Ray and storage say, and (2) launches queued jobs, oldest first, while they fit the
cluster's free CPUs/GPUs. While jobs are queued or running, a small background scheduler process
keeps ticking (see orchestrator/control/scheduler.py), so the queue drains even if nobody is watching.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from orchestrator.control import job_secrets
from orchestrator.control.admission import check_fits_cluster, check_fits_totals, worker_group_needs
from orchestrator.control.autoscaling import Capacity, cluster_capacity, note_waiting_for_nodes
from orchestrator.control.cluster_address import (
    ClusterUnavailable,
    cluster_totals,
    dashboard_url,
    is_loopback,
    runs_on_this_machine,
)
from orchestrator.control.index import JobIndex, JobRecord, new_job_id, ray_submission_id
from orchestrator.control.local_cluster import LocalCluster
from orchestrator.control.ray_jobs import RayJobs, driver_entrypoint, job_runtime_env
from orchestrator.control.ray_retry import retry_budget_s
from orchestrator.control.settings import db_path, orch_home, ray_address_override
from orchestrator.core.errors import OrchError
from orchestrator.core.lifecycle import CLUSTER_GONE, CLUSTER_STOPPED, UNREACHABLE, Observation, Transition, decide
from orchestrator.core.resume_spec import resume_spec
from orchestrator.core.run import (
    clear_result,
    count_attempts,
    job_key,
    latest_metrics,
    read_metrics,
    read_result,
    utc_now,
    verdict_from_logs,
    write_spec,
)
from orchestrator.core.secrets import write_secrets_file
from orchestrator.core.spec import JobSpec, parse_spec
from orchestrator.core.states import ACTIVE_STATES, JobState
from orchestrator.core.workload_check import check_submittable
from orchestrator.storage import ObjectStore, open_store

log = logging.getLogger(__name__)
OBSERVE_RETRY_S = 3.0  # how long following a job retries an unanswered Ray status call


class JobManager:
    def __init__(self, home: Path | None = None, address: str | None = None):
        self.home = home or orch_home()
        self.db = JobIndex(db_path() if home is None else self.home / "jobs.db")
        self.address = address or ray_address_override()
        self.local = LocalCluster(self.home)
        self._ray: dict[str, RayJobs] = {}
        self._shares_machine: dict[str, bool] = {}

    # ---- cluster -------------------------------------------------------------------------------
    def shares_machine(self, url: str | None) -> bool:
        """Whether the cluster at `url` runs on this machine: the secrets file and file:// storage work there."""
        if url is None:
            return False
        if url not in self._shares_machine:
            if self.local.was_embedded(url):
                self._shares_machine[url] = True
            elif not is_loopback(url):
                self._shares_machine[url] = False
            else:
                self._shares_machine[url] = runs_on_this_machine(url)  # loopback may be a tunnel elsewhere
        return self._shares_machine[url]

    def cluster_url(self, start: bool) -> str | None:
        """This command's cluster: --address / ORCH_RAY_ADDRESS, else the embedded one (started if asked)."""
        if self.address is not None:
            return dashboard_url(self.address)
        info = self.local.up() if start else self.local.info()
        return info.dashboard_url if info else None

    def prepare_resume(self, rec: JobRecord) -> None:
        """Point a job or campaign about to be resumed at its cluster: where it ran, unless --address says
        otherwise or that was an embedded cluster now gone. Its secrets file is written again from this
        command's environment (a job's end removes it; see job_secrets)."""
        secrets = job_secrets.resume_secrets(rec)  # refused before anything changes if an env value is missing
        if self.address is None and rec.ray_address and not self.local.was_embedded(rec.ray_address):
            url = rec.ray_address
        else:
            url = self.cluster_url(start=True)
            assert url is not None
        self.check_cluster_reaches(url, open_store(rec.storage_uri), secrets)
        self.db.update(rec.id, cancel_requested=False, ray_address=url)
        if self.shares_machine(url):
            job_secrets.write_for_resume(self.secrets_dir, rec)

    def check_cluster_reaches(self, url: str, storage: ObjectStore, secrets: dict[str, str]) -> None:
        """Refuse what a cluster on another machine could not use: files on this disk, secrets in job settings."""
        if self.shares_machine(url):
            return
        if storage.uri.startswith("file://"):
            raise OrchError(
                f"storage: {storage.uri} is a directory on this machine, but the Ray cluster at {url} runs "
                "elsewhere and its workers cannot write there. Set storage to an s3:// URI the cluster can reach."
            )
        if secrets:
            raise OrchError(
                f"env: {', '.join(sorted(secrets))} are secret (every env value is), and they reach workers only "
                f"through a file on this machine, which the Ray cluster at {url} cannot read (its job settings are "
                "readable by anyone with dashboard access). Configure secrets on the cluster's nodes (instance "
                "role, Kubernetes secret); move values that may be shown to public_env."
            )

    def ray_for(self, url: str) -> RayJobs:
        if url not in self._ray:
            self._ray[url] = RayJobs(url)
        return self._ray[url]

    # ---- submit ----------------------------------------------------------------------------------
    def open_target(self, spec: JobSpec) -> tuple[ObjectStore, str, Capacity]:
        """A new job's or campaign's checked storage, its cluster (started if embedded) and what that can hold."""
        check_submittable(spec.workload, spec.working_dir)  # before anything starts or is written
        base = open_store(spec.storage_uri((self.home / "storage").as_uri()))
        base.check()
        url = self.cluster_url(start=True)
        assert url is not None
        return base, url, cluster_capacity(url, cluster_totals(url))

    def submit(self, spec: JobSpec, force: bool = False, memory_per_worker_gb: float | None = None) -> JobRecord:
        """Validate everything that can fail before writing anything, then record, store the spec, queue.

        `force` skips the memory admission check; `memory_per_worker_gb` replaces the budget it derives.
        """
        base, url, capacity = self.open_target(spec)
        check_fits_totals(spec, capacity, f"Job '{spec.name}'", "it could never start",
                          "scaling.num_workers / scaling.cpus_per_worker")
        need_cpu, need_gpu = worker_group_needs(spec)
        if not force:
            check_fits_cluster(spec, url, memory_per_worker_gb)  # a worker that cannot fit its memory never starts
        self.check_cluster_reaches(url, base, spec.secret_env())
        job_id = new_job_id(spec.name)
        job_store = base.child(job_key(job_id))
        write_spec(job_store, spec.redacted())
        rec = JobRecord(id=job_id, name=spec.name, state=JobState.QUEUED, storage_uri=job_store.uri,
                        spec=spec.redacted(), ray_address=url, cpus=need_cpu, gpus=need_gpu)
        self.record(rec, spec.secret_env())
        self.tick()
        return self.db.get(job_id)

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    # ---- the scheduling loop ------------------------------------------------------------------------
    def tick(self) -> None:
        """Reconcile active jobs and campaigns, then start queued jobs that fit, per cluster, oldest first."""
        for rec in self.db.list(states=ACTIVE_STATES):
            try:
                self.reconcile(rec)
            except ClusterUnavailable:
                continue  # that cluster is down for now; the record stays as it is
            except Exception:  # one record must never stop the others from being followed
                log.exception("reconciling %s failed; the other jobs go on", rec.id)
        with self._launch_lock() as mine:
            if not mine:
                return  # another orch process is launching right now; the scheduler ticks again within a second
            job_secrets.sweep(self.secrets_dir, self.db)
            # Read under the lock: all launches happen under it, so the queue and the free resources agree.
            queued = [self._follow_embedded_cluster(r) for r in self.db.list(states=[JobState.QUEUED], kind="job")]
            for url in dict.fromkeys(rec.ray_address for rec in queued):
                try:
                    self._launch_fitting(url, [r for r in queued if r.ray_address == url])
                except ClusterUnavailable:
                    continue  # that cluster is down for now; its jobs stay queued

    def _follow_embedded_cluster(self, rec: JobRecord) -> JobRecord:
        """A job queued on an embedded cluster that has since stopped waits for the one running now, if any."""
        if not rec.ray_address or not self.local.was_embedded(rec.ray_address):
            return rec
        current = self.local.info()
        if current is None or current.dashboard_url == rec.ray_address:
            return rec
        self.db.update(rec.id, ray_address=current.dashboard_url)
        return self.db.get(rec.id)

    @contextmanager
    def _launch_lock(self) -> Iterator[bool]:
        """One launcher per ORCH_HOME at a time, else two processes ticking at once would each count the same
        free CPUs and start too many jobs. Yields False if another process has it."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "launch.lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _launch_fitting(self, url: str, queued: list[JobRecord]) -> None:
        free = dict(cluster_capacity(url, cluster_totals(url)).ceiling)
        for rec in self.db.list(states=ACTIVE_STATES):
            if rec.ray_address == url:
                free["CPU"] -= rec.cpus
                free["GPU"] -= rec.gpus
        for rec in queued:
            if rec.cpus > free["CPU"] + 1e-9 or rec.gpus > free["GPU"] + 1e-9:
                break  # strict FIFO: a big job is not starved by small ones behind it
            if self.launch(rec):
                free["CPU"] -= rec.cpus
                free["GPU"] -= rec.gpus

    def launch(self, rec: JobRecord) -> bool:
        """Start a QUEUED job's driver on Ray. Called under the launch lock."""
        return self.hand_to_ray(rec, lambda: parse_spec(rec.spec, source=f"job {rec.id} spec"),
                                "orchestrator.runtime.driver", "--job-id", {"orch_job_id": rec.id})

    def hand_to_ray(self, rec: JobRecord, job_spec: Callable[[], JobSpec], driver_module: str, id_flag: str,
                    metadata: dict[str, str]) -> bool:
        """Hand a QUEUED record's driver (a job's or a campaign's) to Ray, then mark it STARTING.

        Ray gets it first, so anyone who sees STARTING can ask Ray about it. If this process dies in between,
        the next launch submits the same submission id again, which Ray refuses as a duplicate: never run twice.
        """
        rec = self.db.get(rec.id)
        if rec.state != JobState.QUEUED:
            return False  # cancelled since the queue was read
        submissions = rec.submissions + 1
        submission_id = ray_submission_id(replace(rec, submissions=submissions))
        ray = self.ray_for(rec.ray_address)
        try:
            spec = job_spec()
            same_machine = self.shares_machine(rec.ray_address)
            secrets_file = self.secrets_dir / f"{rec.id}.env"
            runtime_env = job_runtime_env(spec.scaling.use_gpu, secrets_file if secrets_file.is_file() else None,
                                          spec.public_env, spec.working_dir, same_machine, rec.kind == "campaign")
            entrypoint = driver_entrypoint(driver_module, id_flag, rec.id, rec.storage_uri, same_machine)
            ray.submit(submission_id, entrypoint, runtime_env,
                       metadata={**metadata, "orch_name": rec.name, "orch_submission_id": submission_id})
        except ClusterUnavailable as exc:
            if rec.kind == "job":
                # Ray could not take it for now (still starting, overloaded, unreachable): says nothing about the
                # job. It stays QUEUED and a later tick submits it again under the same submission id.
                self.db.update(rec.id, message=f"waiting for Ray to accept it: {exc}")
                return False
            if self.db.transition(rec.id, JobState.QUEUED, JobState.FAILED, submissions=submissions,
                                  finished_at=utc_now(), message=f"{exc} Continue it with: orch resume {rec.id}"):
                job_secrets.drop(self.secrets_dir, rec.id)
            return False
        except Exception as exc:  # whatever Ray (or the spec) raises fails this job, never the whole queue
            message = str(exc) if isinstance(exc, OrchError) else (
                f"Could not hand the job to Ray ({type(exc).__name__}: {exc}). Fix the cause and run "
                f"orch resume {rec.id}.")
            if self.db.transition(rec.id, JobState.QUEUED, JobState.FAILED, submissions=submissions,
                                  finished_at=utc_now(), message=message):
                job_secrets.drop(self.secrets_dir, rec.id)
            return False
        if not self.db.transition(rec.id, JobState.QUEUED, JobState.STARTING, submissions=submissions,
                                  started_at=utc_now(), message=""):
            ray.stop(submission_id)  # cancelled while Ray was taking it
            return False
        return True

    def record(self, rec: JobRecord, secrets: dict[str, str]) -> None:
        """Insert a new record, its secrets file written first: once the record exists, a background scheduler
        may launch it and look for that file."""
        secrets_file = (write_secrets_file(self.secrets_dir, rec.id, secrets)
                        if self.shares_machine(rec.ray_address) else None)
        try:
            self.db.insert(rec)
        except OrchError:
            if secrets_file is not None:
                secrets_file.unlink(missing_ok=True)
            raise

    def observe_ray(self, rec: JobRecord) -> tuple[str | None, str]:
        """(Ray's status of the record's newest submission, Ray's message); see lifecycle.Observation."""
        if self.local.stopped_on_purpose(rec.ray_address):
            # `orch cluster down` or idle stop took its cluster while it ran: cancelled with it, never taken for
            # a lost driver and resubmitted.
            self.db.update(rec.id, cancel_requested=True)
            return CLUSTER_STOPPED, ""
        embedded = self.local.was_embedded(rec.ray_address)
        if embedded and not self._embedded_runs_at(rec.ray_address):
            return None, CLUSTER_GONE  # a new embedded cluster gets new ports: that address never comes back
        try:  # no answer is an observation of nothing, never a verdict (the job may still run): retry briefly,
            # so that `orch list` shows a down cluster's jobs at once; the next tick asks again
            budget = min(OBSERVE_RETRY_S, retry_budget_s())
            return self.ray_for(rec.ray_address).status(ray_submission_id(rec), budget_s=budget)
        except (ClusterUnavailable, RuntimeError, OSError):  # OSError: requests' ConnectionError, a refused socket
            gone = embedded and not self._embedded_runs_at(rec.ray_address)
            return (None, CLUSTER_GONE) if gone else (UNREACHABLE, "")

    def _embedded_runs_at(self, url: str) -> bool:
        current = self.local.info()
        return current is not None and current.dashboard_url == url

    def apply(self, rec: JobRecord, transition: Transition) -> JobRecord:
        """Act on a lifecycle decision for an active record."""
        target = transition.target
        if target is None:
            return self.db.get(rec.id)
        fields: dict = {"message": transition.message}
        if target.terminal:
            fields["finished_at"] = utc_now()
        if self.db.transition(rec.id, rec.state, target, **fields) and target.terminal:
            job_secrets.drop(self.secrets_dir, rec.id)  # `orch resume` takes them from its environment again
        return self.db.get(rec.id)

    def reconcile(self, rec: JobRecord) -> JobRecord:
        """Bring one active record in line with Ray (state) and storage (metrics, attempts, result)."""
        if rec.kind == "campaign":
            from orchestrator.control.campaigns import reconcile_campaign

            return reconcile_campaign(self, rec)
        status, ray_message = self.observe_ray(rec)
        if status == UNREACHABLE:
            return rec
        job_store = open_store(rec.storage_uri)
        metrics = read_metrics(job_store)
        # 0 also where this process cannot read the store (no credentials here): never overwrite a count with it.
        updates = {k: v for k, v in (("attempts", count_attempts(job_store)),
                                     ("metrics_json", metrics and latest_metrics(metrics))) if v}
        if updates:
            self.db.update(rec.id, **updates)
        result = read_result(job_store) if status not in ("PENDING", "RUNNING") else None
        verdict_reason = (result or {}).get("reason") or ("" if result else verdict_from_logs(ray_message) or "")
        return note_waiting_for_nodes(self.db, self.apply(rec, decide(Observation(
            id=rec.id, kind="job", state=rec.state, ray_status=status, ray_message=ray_message,
            verdict=(result or {}).get("status"), verdict_reason=str(verdict_reason),
            cancel_requested=rec.cancel_requested, submissions=rec.submissions,
            max_restarts=int(rec.spec.get("failure", {}).get("max_restarts", 0))))), job_store)

    # ---- user actions ----------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        rec = self.db.get(job_id)
        return self.reconcile(rec) if rec.state in ACTIVE_STATES else rec

    def cancel(self, job_id: str) -> JobRecord:
        rec = self.db.get(job_id)
        if rec.state.terminal:
            raise OrchError(f"Job {job_id} is already {rec.state.value}; nothing to cancel.")
        self.db.update(job_id, cancel_requested=True)
        if rec.state == JobState.QUEUED:
            if self.db.transition(job_id, JobState.QUEUED, JobState.CANCELLED, finished_at=utc_now(),
                                  message="cancelled by user before it started"):
                job_secrets.drop(self.secrets_dir, job_id)
            return self.db.get(job_id)
        self.ray_for(rec.ray_address).stop(ray_submission_id(rec))
        return self.wait(job_id, timeout_s=60, poll_s=0.25)

    def resume(self, job_id: str, overrides: list[str] | tuple[str, ...] = ()) -> JobRecord:
        """Queue a FAILED or CANCELLED job again; its workers continue from the newest verified checkpoint.

        `overrides` (`--set`) may change how it is spread over workers (see core/resume_spec.py)."""
        rec = self.db.get(job_id)
        if rec.state not in (JobState.FAILED, JobState.CANCELLED):
            raise OrchError(f"Job {job_id} is {rec.state.value}; only FAILED or CANCELLED jobs can be resumed.")
        spec = resume_spec(rec.spec, list(overrides), f"job {job_id} spec")[0] if overrides else None
        self.prepare_resume(rec)
        if spec is not None:
            url = self.db.get(job_id).ray_address
            check_fits_totals(spec, cluster_capacity(url, cluster_totals(url)), f"Job '{spec.name}'",
                              "it could never start", "scaling.num_workers / scaling.cpus_per_worker")
            need_cpu, need_gpu = worker_group_needs(spec)
            write_spec(open_store(rec.storage_uri), spec.redacted())  # what the driver starts its workers from
            self.db.update(job_id, spec_json=spec.redacted(), cpus=need_cpu, gpus=need_gpu)
        clear_result(open_store(rec.storage_uri))
        self.db.transition(job_id, rec.state, JobState.QUEUED, finished_at=None, message="resumed")
        self.tick()
        return self.db.get(job_id)

    def wait(self, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0,
             on_update: Callable[[JobRecord], None] | None = None) -> JobRecord:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            self.tick()
            rec = self.db.get(job_id)
            if on_update is not None:
                on_update(rec)
            if rec.state.terminal or (deadline is not None and time.monotonic() > deadline):
                return rec
            time.sleep(poll_s)

    def list(self) -> list[JobRecord]:
        try:
            self.tick()
        except (ClusterUnavailable, OSError):
            pass  # listing must work even when the cluster is down (OSError: requests' ConnectionError)
        return self.db.list()

