"""The Python SDK: every `orch` operation as a method, for notebooks, pipelines and scripts.

    from orchestrator import Client

    client = Client()                                   # ORCH_HOME / ORCH_RAY_ADDRESS, like the CLI
    job = client.submit("jobs/examples/mlp-digits.yaml", overrides={"train.steps": 40})
    job.wait(on_progress=lambda s: print(s.state, s.metrics.get("loss")))
    job.metrics(as_frame=True)                          # a pandas DataFrame (a list of dicts without it)
    job.export("model.safetensors")

    campaign = client.tune("jobs/examples/tune-mlp-asha.yaml", overrides={"num_samples": 4})
    campaign.wait(); campaign.best_trial()

The `orch` command is a thin layer over these methods. Failures raise the same `OrchError` family with
the same messages the CLI prints. Nothing here imports torch or Ray until an operation needs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.control.sdk.specs import Overrides, SpecSource, load_campaign, load_job_spec, override_pairs
from orchestrator.control.sdk.types import BestTrial, CheckpointInfo, ExportResult, JobStatus, Trial, VerifyResult
from orchestrator.core.errors import OrchError

if TYPE_CHECKING:
    from orchestrator.control.generate import Generation
    from orchestrator.control.index import JobRecord
    from orchestrator.control.manager import JobManager
    from orchestrator.storage import ObjectStore

TRIAL_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_trial_id(trial: str | None, campaign_id: str) -> None:
    """A trial id names a folder in storage: never a path."""
    if trial is not None and not TRIAL_ID.match(trial):
        raise OrchError(f"--trial '{trial[:80]}' is not a trial id (letters, digits, '-', '_', '.'; no '/' or "
                        f"'..'). See orch status {campaign_id} for the trial ids.")


class Client:
    """A handle on one ORCH_HOME (job index, embedded cluster, default storage) and one Ray cluster.

    `address`: an existing Ray cluster's dashboard (`http://head:8265`; default ORCH_RAY_ADDRESS, else the
    embedded local cluster, started on first submit). `home`: the ORCH_HOME to use (default ORCH_HOME or ~/.orch).
    """

    def __init__(self, address: str | None = None, home: str | os.PathLike | None = None):
        self.address = address
        self.home = Path(home).expanduser().resolve() if home is not None else None
        self._manager: JobManager | None = None

    @property
    def manager(self) -> JobManager:
        if self._manager is None:
            from orchestrator.control.manager import JobManager

            self._manager = JobManager(home=self.home, address=self.address)
        return self._manager

    # ---- jobs ---------------------------------------------------------------------------------------------
    def submit(self, spec: SpecSource, overrides: Overrides = None, *, force: bool = False,
               memory_per_worker_gb: float | None = None) -> Job:
        """Validate, record, queue and launch a job; returns at once (`Job.wait()` follows it).

        `spec`: a YAML path, a mapping or a JobSpec; `overrides`: `{"train.steps": 40}` (dotted paths, as `--set`).
        `force` skips the memory admission check; `memory_per_worker_gb` sets the budget it checks against."""
        from orchestrator.control.admission import check_budget
        from orchestrator.control.data_check import check_prepared_data

        check_budget(memory_per_worker_gb)  # a bad budget is refused before anything is read or written
        job_spec = load_job_spec(spec, overrides)
        check_prepared_data(job_spec.data)  # a dataset never prepared (or unfinished) is refused before anything runs
        rec = self.manager.submit(job_spec, force=force, memory_per_worker_gb=memory_per_worker_gb)
        self._keep_queue_moving()
        return Job(self, rec.id)

    def job(self, job_id: str) -> Job:
        """A job already submitted (a campaign id gives a Campaign)."""
        rec = self.manager.db.get(job_id)
        return Campaign(self, rec.id) if rec.kind == "campaign" else Job(self, rec.id)

    def jobs(self, state: str | None = None, kind: str | None = None, refresh: bool = True) -> list[JobStatus]:
        """Every job and campaign of this home, oldest first; `state` ("RUNNING", ...) and `kind` ("job",
        "campaign") filter them. `refresh=False` reads the index as it is, without asking Ray first."""
        records = self.manager.list() if refresh else self.manager.db.list()
        wanted = state.upper() if state else None
        return [self._status(r) for r in records
                if (wanted is None or r.state.value == wanted) and (kind is None or r.kind == kind)]

    # ---- campaigns ------------------------------------------------------------------------------------------
    def tune(self, spec: str | os.PathLike | dict[str, Any], overrides: Overrides = None,
             base_dir: str | os.PathLike | None = None) -> Campaign:
        """Start a tuning campaign (a YAML path or a mapping; `overrides` as for `orch tune --set`)."""
        from orchestrator.control.campaigns import submit_campaign

        campaign = load_campaign(spec, overrides, base_dir)
        rec = submit_campaign(self.manager, campaign)
        self._keep_queue_moving()  # follows it, then stops the embedded cluster once idle, as after a job
        return Campaign(self, rec.id)

    def campaign(self, campaign_id: str) -> Campaign:
        rec = self.manager.db.get(campaign_id)
        if rec.kind != "campaign":
            raise OrchError(f"{campaign_id} is a job, not a campaign.")
        return Campaign(self, rec.id)

    # ---- data ---------------------------------------------------------------------------------------------------
    def prepare_data(self, inputs: list[str] | tuple[str, ...], out: str, *, tokenizer: str | None = None,
                     vocab_size: int | None = None, on_progress: Callable[[Any], None] | None = None,
                     **settings: Any) -> Any:
        """`orch data prepare`: tokenize text, JSONL or Parquet inputs (local or s3://) into token shards at `out`
        on this client's cluster. Exactly one of `tokenizer` (a tokenizer.json) and `vocab_size` (train a
        byte-level BPE). `settings`: eos_token, text_field, shard_tokens, val_fraction, unit_bytes. Returns a
        PrepareResult (shards, tokens per split, dtype, vocab, seconds); a rerun skips committed units."""
        from orchestrator.control.data_prepare import PrepareOptions, prepare_data

        options = PrepareOptions(inputs=tuple(inputs), out=out, tokenizer=tokenizer, vocab_size=vocab_size,
                                 **settings)
        return prepare_data(self.manager, options, on_progress=on_progress)

    # ---- shared plumbing -------------------------------------------------------------------------------------
    def _keep_queue_moving(self) -> None:
        from orchestrator.control.scheduler import ensure_scheduler

        ensure_scheduler(self.manager.home)  # the queue drains even when this process exits

    def _status(self, rec: JobRecord) -> JobStatus:
        from orchestrator.core.run import read_tracking
        from orchestrator.storage import open_store

        tracking: dict[str, Any] = {}
        if (rec.spec.get("tracking") or (rec.spec.get("base") or {}).get("tracking")):
            try:
                tracking = read_tracking(open_store(rec.storage_uri))
            except OrchError:
                tracking = {}
        d = rec.as_dict()
        return JobStatus(**{k: d[k] for k in ("id", "kind", "name", "attempts", "storage_uri", "ray_address",
                                              "created_at", "started_at", "finished_at", "message", "cpus", "gpus",
                                              "metrics")}, state=rec.state.value, tracking=tracking)


class Job:
    """A submitted job. Every method asks the index (reconciled with Ray and storage) afresh."""

    def __init__(self, client: Client, job_id: str):
        self.client, self.id = client, job_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    @property
    def _manager(self) -> JobManager:
        return self.client.manager

    def status(self) -> JobStatus:
        return self.client._status(self._manager.get(self.id))

    def wait(self, timeout: float | None = None, on_progress: Callable[[JobStatus], None] | None = None,
             poll_s: float = 1.0) -> JobStatus:
        """Block until the job ends (or `timeout` seconds pass); `on_progress` gets each new status."""
        last: list[JobStatus | None] = [None]

        def update(rec: JobRecord) -> None:
            status = self.client._status(rec)
            if on_progress is not None and status != last[0]:
                on_progress(status)
            last[0] = status

        return self.client._status(self._manager.wait(self.id, timeout_s=timeout, poll_s=poll_s, on_update=update))

    def cancel(self) -> JobStatus:
        return self.client._status(self._manager.cancel(self.id))

    def resume(self, overrides: Overrides = None) -> JobStatus:
        """Queue a FAILED or CANCELLED job again; it continues from its newest verified checkpoint.

        `overrides` may change how it is spread over workers, e.g. `{"scaling.num_workers": 1}`: the checkpoint
        is resharded for the new count and the global batch kept where the accumulation steps allow."""
        rec = self._manager.resume(self.id, override_pairs(overrides))
        self.client._keep_queue_moving()
        return self.client._status(rec)

    def metrics(self, as_frame: bool = False) -> Any:
        """Every reported row (step, loss, lr, throughput, eval metrics...), oldest first: a list of dicts, or a
        pandas DataFrame with `as_frame=True` (pandas must be installed)."""
        from orchestrator.core.run import read_metrics

        rows = read_metrics(self.store())
        if not as_frame:
            return rows
        try:
            import pandas
        except ImportError:
            raise OrchError("metrics(as_frame=True) needs pandas; pip install pandas, or call metrics() for a "
                            "list of dicts.") from None
        return pandas.DataFrame(rows)

    def result(self) -> dict[str, Any] | None:
        """result.json: the verdict and final summary, once the run has ended (None before)."""
        from orchestrator.core.run import read_result

        return read_result(self.store())

    def checkpoints(self, trial: str | None = None) -> list[CheckpointInfo]:
        from orchestrator.core import checkpoints

        store = self.store(trial)
        rows = []
        for info in checkpoints.list_checkpoints(store):
            verified = checkpoints.verify_checkpoint(store, info.step, deep=False).ok if info.committed else False
            rows.append(CheckpointInfo(step=info.step, created=info.created, size_bytes=info.size,
                                       committed=info.committed, verified=verified, metrics=dict(info.metrics)))
        return rows

    def verify(self, step: int | None = None, trial: str | None = None) -> list[VerifyResult]:
        """Re-hash every file of every committed checkpoint (or one step) against its manifest."""
        from orchestrator.core import checkpoints

        store = self.store(trial)
        infos = [c for c in checkpoints.list_checkpoints(store) if c.committed and (step is None or c.step == step)]
        if not infos:
            raise OrchError(f"Job {self.id} has no committed checkpoint{'' if step is None else ' at that step'}.")
        results = []
        for info in infos:
            res = checkpoints.verify_checkpoint(store, info.step, deep=True)
            results.append(VerifyResult(info.step, res.ok, res.checked_files, tuple(res.problems)))
        return results

    def export(self, path: str | os.PathLike, step: int | None = None, trial: str | None = None,
               safetensors: bool | None = None, format: str | None = None,
               max_shard_size: str | int | None = None) -> ExportResult:
        """One consolidated fp32 state dict from the ZeRO shards (default: the newest verified checkpoint).

        `format`: "pt" (torch.save), "safetensors", or "hf": a directory transformers loads by itself (config,
        safetensors shards of at most `max_shard_size`, default 5GB, and the tokenizer). Without it: safetensors
        when `safetensors` is True or the path ends in .safetensors, torch.save otherwise."""
        from orchestrator.control.export import check_out_path, choose_step, open_consolidated, save_state_dict
        from orchestrator.control.hf_export import check_format

        fmt = check_format(format, max_shard_size)
        if fmt == "hf":
            return self._export_hf(path, step, trial, max_shard_size)
        out = check_out_path(str(path))  # before any work: never a directory, a device or a pipe
        store = self.store(trial)
        chosen = choose_step(store, step)
        use_st = fmt == "safetensors" if fmt else (safetensors if safetensors is not None
                                                   else out.suffix == ".safetensors")
        with open_consolidated(store, chosen) as state:  # safetensors streams it; pt holds it in memory
            save_state_dict(state, out, "safetensors" if use_st else "pt")
            return ExportResult(str(out), chosen, len(state), sum(t.numel() for t in state.values()))

    def _export_hf(self, path: str | os.PathLike, step: int | None, trial: str | None,
                   max_shard_size: str | int | None) -> ExportResult:
        from orchestrator.control.hf_export import export_stored_run

        done, chosen = export_stored_run(self.store(trial), self.spec(trial), str(path), step, max_shard_size)
        return ExportResult(done.path, chosen, done.tensors, done.parameters, done.shards)

    def generate(self, prompt: str, max_new_tokens: int | None = None, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None, step: int | None = None,
                 trial: str | None = None) -> Generation:
        """Continue `prompt` with the job's model: exported with format "hf" to a temporary directory, then
        sampled with transformers' generate (`seed` makes it reproducible, temperature 0 is greedy)."""
        import tempfile

        from orchestrator.control.generate import check_sampling, generate_from_dir

        check_sampling(prompt, max_new_tokens, temperature, top_k)
        with tempfile.TemporaryDirectory(prefix="orch-generate-") as tmp:
            model_dir = Path(tmp) / "model"
            self.export(model_dir, step=step, trial=trial, format="hf")
            return generate_from_dir(model_dir, prompt, max_new_tokens, temperature, top_k, seed)

    def logs(self, follow: bool = False, rank: int | None = None) -> str | Iterator[str]:
        """The driver's and workers' log, worker lines tagged `[rank N]`, without colour codes: the whole text,
        or with `follow=True` an iterator of lines that ends when the job does."""
        from orchestrator.control.logview import LogFilter, split_lines

        ray, submission = self.ray_log_source()
        view = LogFilter(rank=rank, since=None)
        if follow:
            return view.run(split_lines(ray.follow_logs(submission)))
        raw = self.fetch_logs(ray, submission).splitlines()
        for line in raw:
            view.learn(line)
        return "".join(line + "\n" for line in view.run(raw))

    # ---- used by the CLI and the page --------------------------------------------------------------------------
    def record(self) -> JobRecord:
        return self._manager.db.get(self.id)

    def store(self, trial: str | None = None) -> ObjectStore:
        """The store holding the job's run (a campaign: one trial's, the best one by default)."""
        from orchestrator.storage import open_store

        rec = self.record()
        if trial is not None:
            raise OrchError(f"--trial: {self.id} is a job, not a campaign; drop --trial.")
        return open_store(rec.storage_uri)

    def spec(self, trial: str | None = None) -> dict[str, Any]:
        self.store(trial)  # the same checks
        return self.record().spec

    def ray_log_source(self) -> tuple[Any, str]:
        """(Ray Jobs client, submission id) of the job's newest run, or why there is none."""
        from orchestrator.control.index import ray_submission_id

        rec = self.record()
        if rec.ray_address is None or rec.submissions == 0:  # never ask "any Ray on this machine"
            raise OrchError(f"Job {rec.id} has no Ray logs: it has not been handed to a Ray cluster we know "
                            f"({rec.state.value.lower()}). Its metrics and result are in {rec.storage_uri}.")
        return self._manager.ray_for(rec.ray_address), ray_submission_id(rec)

    def fetch_logs(self, ray: Any, submission: str) -> str:
        try:
            return ray.logs(submission)
        except (RuntimeError, ConnectionError):  # Ray's "job does not exist" / HTTP errors / a stopped cluster
            rec = self.record()
            raise OrchError(f"The Ray cluster at {rec.ray_address} has no logs for job {rec.id} (it was probably "
                            f"stopped or restarted since the job ran). Its metrics and result are in "
                            f"{rec.storage_uri}.") from None


class Campaign(Job):
    """A tuning campaign: a Job whose checkpoints, exports and metrics are those of one trial (the best by default)."""

    def summary(self, refresh: bool = True) -> dict[str, Any]:
        """What `orch status CAMPAIGN --json` prints: the record, counts, the best trial and every trial.
        `refresh=False` reads the index as it is, without asking Ray first."""
        from orchestrator.control.campaigns import campaign_status

        return campaign_status(self._manager.get(self.id) if refresh else self.record())

    def trials(self) -> list[Trial]:
        return [Trial.from_summary(t) for t in self.summary()["trials"]]

    def best_trial(self) -> BestTrial | None:
        best = self.summary()["best_trial"]
        return BestTrial.from_summary(best) if best else None

    def resume(self) -> JobStatus:
        """Start a new driver for a FAILED or CANCELLED campaign; finished trials are not rerun."""
        from orchestrator.control.campaigns import resume_campaign

        return self.client._status(resume_campaign(self._manager, self.id))

    def metrics(self, as_frame: bool = False, trial: str | None = None) -> Any:
        """One trial's rows (default: the best trial)."""
        return _TrialJob(self.client, self.id, self.store(trial)).metrics(as_frame)

    def store(self, trial: str | None = None) -> ObjectStore:
        from orchestrator.core.campaign_summary import read_summary
        from orchestrator.core.run import read_spec, trial_key
        from orchestrator.storage import StorageError, open_store

        check_trial_id(trial, self.id)
        store = open_store(self.record().storage_uri)
        if trial is None:
            trial = ((read_summary(store) or {}).get("best_trial") or {}).get("id")
            if trial is None:
                raise OrchError(f"Campaign {self.id} has no best trial yet; name one with --trial (see orch status "
                                f"{self.id}).")
        trial_store = store.child(trial_key(trial))
        try:
            read_spec(trial_store)
        except StorageError:
            raise OrchError(f"--trial: campaign {self.id} has no trial '{trial}'; see orch status {self.id} for the "
                            "trial ids.") from None
        return trial_store

    def spec(self, trial: str | None = None) -> dict[str, Any]:
        from orchestrator.core.run import read_spec

        return read_spec(self.store(trial))


class _TrialJob(Job):
    """One trial read like a job (its metrics), for Campaign.metrics."""

    def __init__(self, client: Client, campaign_id: str, store: ObjectStore):
        super().__init__(client, campaign_id)
        self._store = store

    def store(self, trial: str | None = None) -> ObjectStore:
        return self._store

