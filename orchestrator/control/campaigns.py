"""Campaign records: submit, launch, reconcile, resume.

A campaign is a JobIndex record with kind='campaign', run by one Ray job (the campaign driver,
`python -m orchestrator.runtime.campaign.driver`) that runs Ray Tune. It reuses the JobManager's cluster,
Ray Jobs and secrets plumbing; `JobManager.reconcile` hands campaign records to `reconcile_campaign`.
A campaign is launched as soon as it is submitted: Tune itself waits for free CPUs for its trials,
and the record's CPU count (its concurrent trials) keeps queued jobs from crowding it out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from orchestrator.control.admission import check_fits_cluster, check_fits_totals, worker_group_needs
from orchestrator.control.index import JobRecord, new_job_id
from orchestrator.core.campaign_spec import Campaign
from orchestrator.core.campaign_summary import PLOT_FILE, read_summary
from orchestrator.core.errors import OrchError
from orchestrator.core.lifecycle import UNREACHABLE, Observation, decide
from orchestrator.core.run import campaign_key, write_spec
from orchestrator.core.spec import parse_spec
from orchestrator.core.states import JobState
from orchestrator.storage import open_store

if TYPE_CHECKING:  # the manager hands campaign records here, so no runtime import back
    from orchestrator.control.manager import JobManager

KIND = "campaign"


def submit_campaign(manager: JobManager, campaign: Campaign) -> JobRecord:
    """Check storage and the cluster, store the campaign, record it and start its driver."""
    spec, job = campaign.spec, campaign.base_job
    base, url, capacity = manager.open_target(job)
    check_fits_totals(job, capacity, f"Each trial of campaign '{spec.name}'", "no trial could ever start",
                      "trial_resources.num_workers / cpus_per_worker")
    totals = capacity.ceiling  # trials beyond the nodes alive now wait for the autoscaler's
    trial_cpus, trial_gpus = worker_group_needs(job)
    for trial_job in (job, *campaign.probe_jobs()):  # the biggest model in the space must fit a worker too
        check_fits_cluster(trial_job, url)
    manager.check_cluster_reaches(url, base, campaign.secrets)
    fits = math.floor(totals["CPU"] / trial_cpus + 1e-9) if trial_cpus else spec.trial_count()
    if trial_gpus:
        fits = min(fits, math.floor(totals["GPU"] / trial_gpus + 1e-9))
    concurrency = spec.max_concurrent_trials or max(1, min(fits, spec.trial_count()))
    campaign_id = new_job_id(spec.name)
    store = base.child(campaign_key(campaign_id))
    record = {**campaign.to_record(), "concurrency": concurrency}
    write_spec(store, record)
    running = min(concurrency, fits)
    rec = JobRecord(id=campaign_id, name=spec.name, state=JobState.QUEUED, storage_uri=store.uri, spec=record,
                    kind=KIND, ray_address=url, cpus=running * trial_cpus, gpus=running * trial_gpus)
    manager.record(rec, campaign.secrets)
    launch_campaign(manager, rec)
    return manager.db.get(campaign_id)


def launch_campaign(manager: JobManager, rec: JobRecord) -> bool:
    """Start a QUEUED campaign's driver on Ray, as JobManager.launch does for a job's."""
    return manager.hand_to_ray(rec, lambda: parse_spec(rec.spec["base"], source=f"campaign {rec.id} base job spec"),
                               "orchestrator.runtime.campaign.driver", "--campaign-id", {"orch_campaign_id": rec.id})


def reconcile_campaign(manager: JobManager, rec: JobRecord) -> JobRecord:
    """Bring an active campaign record in line with Ray (its driver's state) and campaign.json (progress)."""
    status, ray_message = manager.observe_ray(rec)
    if status == UNREACHABLE:
        return rec
    summary = read_summary(open_store(rec.storage_uri))
    transition = decide(Observation(
        id=rec.id, kind="campaign", state=rec.state, ray_status=status, ray_message=ray_message,
        verdict=(summary or {}).get("state"), verdict_reason=(summary or {}).get("reason", ""),
        cancel_requested=rec.cancel_requested, submissions=rec.submissions))
    updates: dict[str, Any] = {"attempts": rec.submissions}
    if summary:
        ended = transition.target is not None and transition.target.terminal
        updates["metrics_json"] = progress_metrics(summary, ended=ended)
    manager.db.update(rec.id, **updates)
    return manager.apply(rec, transition)


def resume_campaign(manager: JobManager, campaign_id: str) -> JobRecord:
    """Start a new driver for a FAILED or CANCELLED campaign; it continues the stored Tune experiment."""
    rec = manager.db.get(campaign_id)
    if rec.state not in (JobState.FAILED, JobState.CANCELLED):
        raise OrchError(f"Campaign {campaign_id} is {rec.state.value}; only FAILED or CANCELLED campaigns can be "
                        "resumed.")
    manager.prepare_resume(rec)
    manager.db.transition(campaign_id, rec.state, JobState.QUEUED, finished_at=None, message="resumed")
    launch_campaign(manager, manager.db.get(campaign_id))
    return manager.db.get(campaign_id)


def interrupted(summary: dict[str, Any]) -> dict[str, Any]:
    """The last campaign.json of a driver that is gone: its running trials are not running any more."""
    if summary.get("state") not in (None, "RUNNING"):
        return summary
    trials = [{**t, "state": "INTERRUPTED"} if t["state"] in ("RUNNING", "PAUSED") else t
              for t in summary.get("trials", [])]
    counts = {**summary.get("counts", {}), "running": 0, "paused": 0,
              "interrupted": sum(t["state"] == "INTERRUPTED" for t in trials)}
    return {**summary, "trials": trials, "counts": counts}


def progress_metrics(summary: dict[str, Any], ended: bool) -> dict[str, Any]:
    """The record's metrics: trial counts and the best value so far (what `orch list`/`--wait` show)."""
    if ended:
        summary = interrupted(summary)
    best = summary.get("best_trial") or {}
    return {**summary.get("counts", {}), "planned": summary.get("planned_trials"),
            "metric": summary.get("metric"), "best": best.get("value"), "best_trial": best.get("id"),
            "total_steps": summary.get("total_steps"), "steps_after_stop": summary.get("steps_after_stop", 0)}


def campaign_status(rec: JobRecord) -> dict[str, Any]:
    """`orch status CAMPAIGN --json`: the record plus what the driver last wrote to campaign.json."""
    summary = read_summary(open_store(rec.storage_uri)) or {}
    if rec.state.terminal:
        summary = interrupted(summary)
    return {
        **rec.as_dict(),
        "campaign_state": summary.get("state"),
        "scheduler": summary.get("scheduler", rec.spec["campaign"].get("scheduler", {}).get("type", "fifo")),
        "search": summary.get("search", rec.spec["campaign"].get("search", {}).get("algorithm", "random")),
        "metric": summary.get("metric", rec.spec["campaign"]["metric"]),
        "mode": summary.get("mode", rec.spec["campaign"]["mode"]),
        "planned_trials": summary.get("planned_trials"),
        "trial_launch": summary.get("trial_launch"),
        "counts": summary.get("counts", {}),
        "total_steps": summary.get("total_steps", 0),
        "steps_after_stop": summary.get("steps_after_stop", 0),
        "best_trial": summary.get("best_trial"),
        "trials": summary.get("trials", []),
        "plot_uri": f"{rec.storage_uri}/{PLOT_FILE}",
    }
