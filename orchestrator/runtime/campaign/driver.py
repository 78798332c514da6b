"""The campaign's Ray job entrypoint: run (or continue) a Ray Tune experiment over orch trials.

    python -m orchestrator.runtime.campaign.driver --campaign-id ID --store URI

The Tune experiment directory lives in the campaign's own storage (`<campaign>/tune/`), so a driver
that dies loses nothing: the next driver for the same campaign finds it and continues with
`Tuner.restore(resume_unfinished=True, restart_errored=True)`; finished trials are not run again and
the others continue from their own newest verified checkpoint. campaign.json is written last, whatever
happens; its `state` is the verdict the manager reads.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
import traceback
from typing import Any

from ray import tune

from orchestrator.core.campaign_spec import Campaign
from orchestrator.core.campaign_summary import (
    TrialView,
    campaign_summary,
    read_summary,
    write_reports,
)
from orchestrator.core.run import TRIALS_PREFIX, read_result, read_spec, trial_key, write_result
from orchestrator.core.rungs import rung_steps
from orchestrator.core.secrets import load_secrets_file
from orchestrator.runtime.campaign.reaper import OrphanedGroupReaper
from orchestrator.runtime.tracking_runs import start_campaign_tracking
from orchestrator.storage import ObjectStore, open_store
from orchestrator.storage.local import LocalStore

TUNE_DIR = "tune"
PROGRESS_EVERY_S = 2.0
PLOT_EVERY_S = 15.0
TRIAL_DRIVER_MEMORY = 256 * 1024**2


def tune_storage(store: ObjectStore) -> tuple[str, Any]:
    """(storage_path, pyarrow filesystem or None) for Tune's experiment state inside the campaign store."""
    if isinstance(store, LocalStore):
        return str(store.root), None
    from orchestrator.runtime.campaign.tune_fs import plain_keys_s3
    from orchestrator.storage.s3 import S3Store

    assert isinstance(store, S3Store)
    # Not Arrow's S3FileSystem: it writes directory-marker keys, and Tune pickles the filesystem (with any keys
    # given to it) into tuner.pkl and experiment_state in the bucket. This one holds the bucket name only.
    return f"{store.bucket}/{store.prefix}".rstrip("/"), plain_keys_s3(store.bucket)


class CampaignProgress(tune.Callback):
    """A Tune callback in the driver: keeps campaign.json, leaderboard.json and the plot current."""

    def __init__(self, campaign_id: str, campaign: Campaign, store_uri: str):
        self.campaign_id, self.campaign, self.store_uri = campaign_id, campaign, store_uri
        self._written = self._plotted = 0.0
        self._started = time.monotonic()  # this driver's start: Tune's time budget counts from it too

    def budget_spent(self) -> str:
        """Why the campaign's budget ended it ('' when it did not): its verdict says so instead of a bare end."""
        budget = self.campaign.spec.budget
        if budget.total_steps is not None:
            from orchestrator.runtime.campaign.tuning import steps_in_storage

            spent = sum(steps_in_storage(open_store(self.store_uri).child(TRIALS_PREFIX)).values())
            if spent >= budget.total_steps:
                return f"step budget reached: {spent} steps trained (budget.total_steps {budget.total_steps})"
        if budget.time_s is not None and time.monotonic() - self._started >= budget.time_s:
            return f"time budget reached (budget.time_s {budget.time_s:g})"
        return ""

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the experiment
        return {"campaign_id": self.campaign_id, "campaign": self.campaign.to_record(), "store_uri": self.store_uri}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["campaign_id"], Campaign.from_record(state["campaign"]), state["store_uri"])

    def write(self, trials: list[Any], state: str = "RUNNING", reason: str = "", plot: bool = False) -> None:
        store = open_store(self.store_uri)
        views = [TrialView(t.trial_id, t.status, dict(t.config), (t.last_result or {}).get("step")) for t in trials]
        write_reports(store, campaign_summary(self.campaign_id, self.campaign, views, store, state, reason), plot)
        self._written = time.monotonic()
        if plot:
            self._plotted = self._written

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._written >= PROGRESS_EVERY_S:
            self.write(trials, plot=time.monotonic() - self._plotted >= PLOT_EVERY_S)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        trial_store = open_store(self.store_uri).child(trial_key(trial.trial_id))
        if read_result(trial_store) is None:
            # Stopped by the scheduler or the budget (a trial that trained to the end wrote its own result).
            # Recorded so that a restarted driver never trains it again, even if Tune's state missed the stop.
            step = (trial.last_result or {}).get("step")
            write_result(trial_store, "STOPPED", f"stopped early at step {step}")
        self.write(trials, plot=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.write(trials, plot=True)

    def _why(self, trial_ids: list[str]) -> str:
        """'id (reason); id (reason)': the reasons the trials wrote, so the campaign's verdict says why."""
        store = open_store(self.store_uri)
        parts = []
        for trial_id in trial_ids:
            reason = (read_result(store.child(trial_key(trial_id))) or {}).get("reason") or "no reason recorded"
            parts.append(f"{trial_id} ({str(reason)[:300]})")
        return "; ".join(parts)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
        failed = [t.trial_id for t in trials if t.status == "ERROR"]
        if unfinished:
            state, reason = "INTERRUPTED", f"{len(unfinished)} trials did not finish: {', '.join(unfinished)}"
        elif failed:
            state, reason = "FAILED", f"{len(failed)} of {len(trials)} trials failed: {self._why(failed)}"
        else:
            state, reason = "SUCCEEDED", self.budget_spent()
        self.write(trials, state, reason, plot=True)


def build_tuner(campaign_id: str, campaign: Campaign, store: ObjectStore, concurrency: int) -> tuple[Any, bool]:
    """(Tuner, whether it continues an earlier driver's experiment)."""
    from orchestrator.runtime.campaign import tuning
    from orchestrator.runtime.campaign.trial import run_trial

    spec, job = campaign.spec, campaign.base_job
    in_process = campaign.trials_in_process
    if in_process:  # the trial process is the worker (inline_trial.py): it holds the worker's CPUs
        resources: dict[str, float] = {"cpu": job.scaling.cpus_per_worker}
    else:
        # Trials are drivers only: their TorchTrainer's workers hold the CPUs, so the trial itself takes none
        # (Tune needs some resource in a trial's bundle: its driver process's memory, logically reserved).
        resources = {"cpu": 0, "memory": TRIAL_DRIVER_MEMORY}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, campaign_id=campaign_id, campaign_store=store.uri, base=campaign.base,
                             rungs=rung_steps(campaign), metric=campaign.spec.metric, in_process=in_process),
        resources)
    storage_path, filesystem = tune_storage(store)
    experiment = f"{storage_path}/{TUNE_DIR}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, restart_errored=True,
                                  storage_filesystem=filesystem), True
    tune_config = tune.TuneConfig(
        metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
        search_alg=tuning.search_algorithm(spec, concurrency),
        scheduler=tuning.scheduler(campaign, job.checkpoint.every_steps),
        time_budget_s=spec.budget.time_s, trial_dirname_creator=lambda trial: trial.trial_id,
        # A trial in its own process hands that process on to the next trial: torch, DeepSpeed and the workload
        # are imported once per process, not once per trial (most of what starting such a trial costs). A worker
        # group's trial is never reused: ending its process is what tears down its TorchTrainer (controller,
        # workers, placement group) when the scheduler stops the trial.
        reuse_actors=in_process,
    )
    run_config = tune.RunConfig(
        name=TUNE_DIR, storage_path=storage_path, storage_filesystem=filesystem,
        callbacks=[CampaignProgress(campaign_id, campaign, store.uri), OrphanedGroupReaper()],
        stop=tuning.stopper(spec, store.child("trials")),
        # A trial's own workers restart under Ray Train (failure.max_restarts); a trial that still fails is final.
        # A trial in its own process has no Ray Train to restart it: Tune does, as often, from its newest checkpoint.
        failure_config=tune.FailureConfig(max_failures=job.failure.max_restarts if in_process else 0),
        verbose=1,
    )
    return tune.Tuner(trainable, param_space=tuning.param_space(spec), tune_config=tune_config,
                      run_config=run_config), False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator.runtime.campaign.driver")
    parser.add_argument("--campaign-id", required=True)
    parser.add_argument("--store", required=True, help="the campaign's storage prefix URI")
    args = parser.parse_args(argv)
    load_secrets_file()
    # Eval metrics arrive only at eval steps; schedulers skip reports without the metric, Tune must not fail them.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Save the experiment state often: it is what a restarted driver continues from.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    store = open_store(args.store)
    record = read_spec(store)
    campaign = Campaign.from_record(record)
    if campaign.spec.search.seed is not None:
        random.seed(campaign.spec.search.seed)  # PBT's explore step draws from Python's random
    import_ipython_whole()  # before the tracking thread starts
    # The campaign as a parent run and each trial as a child run in the experiment tracker, from a thread.
    tracking = start_campaign_tracking(args.campaign_id, record, store)
    try:
        tuner, resumed = build_tuner(args.campaign_id, campaign, store, int(record["concurrency"]))
        print(f"orch: campaign {args.campaign_id}: {'continuing' if resumed else 'starting'} Tune experiment")
        tuner.fit()
    except Exception as exc:
        traceback.print_exc()
        _write_verdict(store, args.campaign_id, campaign, "FAILED", f"{type(exc).__name__}: {exc}"[:1000])
        print(f"orch: campaign {args.campaign_id} FAILED: {exc}", file=sys.stderr)
        if tracking is not None:
            tracking.finish("FAILED")
        return 1
    summary = read_summary(store) or {}
    if summary.get("state") in (None, "RUNNING"):
        _write_verdict(store, args.campaign_id, campaign, "INTERRUPTED", "Tune stopped before the campaign ended")
        summary = read_summary(store) or {}
    if tracking is not None:
        tracking.finish(str(summary.get("state")))
    reason = f": {summary['reason']}" if summary.get("reason") else ""
    print(f"orch: campaign {args.campaign_id} {summary.get('state')}{reason}")
    return 0 if summary.get("state") == "SUCCEEDED" else 1


def import_ipython_whole() -> None:
    """Import IPython (where installed) on this thread, now. mlflow imports it on the tracking thread, and matplotlib
    (the campaign's plot, drawn on Tune's thread) reads IPython's version once it sees the name in sys.modules: seen
    half-initialised, that failed the campaign ("partially initialized module 'IPython' has no attribute
    'version_info'"). Imported whole first, every later import finds it complete."""
    with contextlib.suppress(ImportError):
        import IPython  # noqa: F401


def _write_verdict(store: ObjectStore, campaign_id: str, campaign: Campaign, state: str, reason: str) -> None:
    """The verdict when Tune could not write it: the trials as the last campaign.json saw them."""
    last = read_summary(store) or {}
    views = [TrialView(t["id"], "ERROR" if t["state"] == "FAILED" else
                       "TERMINATED" if t["state"] in ("SUCCEEDED", "STOPPED") else t["state"], t["config"],
                       t.get("tune_step")) for t in last.get("trials", [])]
    write_reports(store, campaign_summary(campaign_id, campaign, views, store, state, reason), plot=True)


if __name__ == "__main__":
    sys.exit(main())
