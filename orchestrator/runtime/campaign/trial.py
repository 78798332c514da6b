"""One Tune trial: an ordinary orch job (TorchTrainer + DeepSpeed workers) whose reports feed Ray Tune.

The trial function is the Tune trainable. It builds the trial's job spec (the base spec with the
trial's config set), runs `orchestrator.runtime.driver.build_trainer` on the trial's own store
`<campaign>/trials/<trial-id>/` (the job layout: spec.yaml, metrics.jsonl, checkpoints, result.json),
and forwards every row the workers report to Tune, where the scheduler can stop it. A trial with one CPU
worker runs the same worker code in this process instead (inline_trial.py): no worker group to start.

Restarts are cheap and never repeat work: the workers restore the trial store's newest verified
checkpoint, and a trial whose result.json says it already ended only re-announces its last report.
PBT clones a better trial by copying that trial's newest verified checkpoint into this trial's store
before the workers start (the Tune checkpoint is just a pointer to a trial store).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

from orchestrator.core import checkpoints
from orchestrator.core.campaign_spec import trial_spec_data
from orchestrator.core.run import (
    clear_result,
    read_metrics,
    read_result,
    root_cause,
    trial_key,
    utc_now,
    write_result,
    write_spec,
)
from orchestrator.core.rungs import decision_steps
from orchestrator.core.secrets import load_secrets_file
from orchestrator.core.spec import parse_spec
from orchestrator.runtime.decision_gate import DecisionGate
from orchestrator.storage import ObjectStore, StorageError, open_store

POINTER_FILE = "orch_trial_checkpoint.json"
PBT_FILE = "pbt.json"  # in the trial store: one event per clone (donor store, step, mutated config)
# result.json statuses after which a trial never trains again.
ENDED = ("SUCCEEDED", "STOPPED")
CLONE_ATTEMPTS = 3
COMMIT_WAIT_S = 120.0  # how long a clone waits for the donor's reported checkpoint to commit


def trial_store(campaign_store_uri: str, trial_id: str) -> ObjectStore:
    return open_store(campaign_store_uri).child(trial_key(trial_id))


def trial_job_id(campaign_id: str, trial_id: str) -> str:
    return f"{campaign_id}-{trial_id}"


def run_trial(config: dict[str, Any], campaign_id: str, campaign_store: str, base: dict[str, Any],
              rungs: list[float], metric: str, in_process: bool = False) -> None:
    """The Tune function trainable (see module docstring); `rungs` are the scheduler's judging steps.

    `in_process`: the trial trains in this process (inline_trial.py) instead of starting a worker group."""
    load_secrets_file()
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    store = trial_store(campaign_store, trial_id)
    ended = read_result(store)
    if ended and ended.get("status") in ENDED:
        # The campaign driver was restarted after this trial ended but before Tune recorded it.
        tune.report(last_report(store))
        return
    spec = parse_spec(trial_spec_data(base, config), source=f"trial {trial_id} spec")
    write_spec(store, spec.redacted())
    clear_result(store)
    pointer = _read_pointer(tune.get_checkpoint())
    if pointer and pointer["trial_store"] != store.uri and not already_adopted(store, pointer):
        adopt_checkpoint(open_store(pointer["trial_store"]), store, config, pointer)
    job_id = trial_job_id(campaign_id, trial_id)
    if in_process:
        _train_here(spec, job_id, store)
    else:
        _train_and_forward(spec, job_id, store, decision_steps(spec, rungs, metric))


def _train_here(spec: Any, job_id: str, store: ObjectStore) -> None:
    """The single-worker trial in this process: every report goes straight to Tune (see inline_trial.py)."""
    from orchestrator.runtime.campaign.inline_trial import train_in_this_process

    try:
        train_in_this_process(spec, job_id, store.uri, lambda row: report_to_tune(row, store, spec))
    except Exception as exc:  # not SystemExit: Tune stopping the trial is no failure
        reason = root_cause(exc)
        write_result(store, "FAILED", reason)
        raise RuntimeError(f"trial training failed: {reason}") from exc
    write_result(store, "SUCCEEDED")


def report_to_tune(row: dict[str, Any], store: ObjectStore, spec: Any) -> None:
    """Hand one metrics row to Tune; at checkpoint steps with a pointer to this trial's store as its checkpoint."""
    from ray import tune

    step = int(row.get("step", 0))
    every = spec.checkpoint.every_steps
    if every and step % every == 0:
        # This step's checkpoint is being saved (adopt_checkpoint waits for it to commit); the pointer lets PBT
        # (and Tune's pause/resume) restart a trial from this store's checkpoints.
        with tempfile.TemporaryDirectory(prefix="orch-trial-ckpt-") as tmp:
            Path(tmp, POINTER_FILE).write_text(json.dumps({"trial_store": store.uri, "step": step}))
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(tmp))
    else:
        tune.report(row)


def _train_and_forward(spec: Any, job_id: str, store: ObjectStore, gate_steps: list[int]) -> None:
    from ray.util.queue import Empty, Queue

    from orchestrator.runtime.driver import build_trainer

    # The workers wait at each gate step until Tune has judged it (decision_gate.py); between them they do not
    # wait for Tune, and the summary charges any steps run past the report Tune stopped a trial at.
    gate = DecisionGate(gate_steps) if gate_steps else None
    trainer = build_trainer(spec, job_id, store.uri, gate=gate, ray_reports=True)
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})  # one report at a time, in order
    trainer.run_config.callbacks = [*(trainer.run_config.callbacks or []), ForwardReports(reports)]
    outcome: dict[str, BaseException] = {}
    fit = threading.Thread(target=_fit, args=(trainer, outcome), name="orch-trial-fit", daemon=True)
    fit.start()
    try:
        while True:
            try:
                row = reports.get(timeout=0.5)
            except Empty:
                if fit.is_alive() or not reports.empty():
                    continue
                break
            report_to_tune(row, store, spec)
            if gate is not None:  # tune.report returns only once Tune asks for the next report: it goes on
                gate.release(int(row.get("step", 0)))
    except BaseException:
        # Tune stopped or paused the trial (SystemExit out of tune.report). Closing the gate ends workers waiting
        # at a rung; killing the queue makes the Train controller's next hand-over fail, so it tears the workers
        # down now rather than when this process ends.
        if gate is not None:
            gate.close()
        reports.shutdown(force=True)
        raise
    fit.join()
    if "error" in outcome:
        reason = root_cause(outcome["error"])
        write_result(store, "FAILED", reason)
        raise RuntimeError(f"trial training failed: {reason}") from outcome["error"]
    write_result(store, "SUCCEEDED")


def _fit(trainer: Any, outcome: dict[str, BaseException]) -> None:
    try:
        trainer.fit()
    except BaseException as exc:  # handed to the trial thread, which reports it to Tune
        outcome["error"] = exc


class ForwardReports(UserCallback):
    """Runs in the Train controller: hands rank 0's row of each report to the trial thread."""

    def __init__(self, queue: Any):
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.queue.put(dict(metrics[0]))


def last_report(store: ObjectStore) -> dict[str, Any]:
    """The newest value of every numeric metric, as the trial's final report to Tune."""
    merged: dict[str, Any] = {}
    for row in read_metrics(store):
        merged.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return merged


def _read_pointer(checkpoint: Any) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        path = Path(directory, POINTER_FILE)
        return json.loads(path.read_text()) if path.is_file() else None


def already_adopted(dest: ObjectStore, pointer: dict[str, Any]) -> bool:
    """Whether dest's newest clone came from this very pointer. Tune hands a trial the donor's pointer until the
    trial reports a checkpoint of its own; a trial restarted in between (a resumed campaign) continues from its own
    store instead of cloning the donor a second time and losing what it trained since."""
    events = _pbt_events(dest)
    return bool(events) and events[-1].get("pointer") == pointer


def _pbt_events(dest: ObjectStore) -> list[dict[str, Any]]:
    return json.loads(dest.get_bytes(PBT_FILE)) if dest.exists(PBT_FILE) else []


def adopt_checkpoint(source: ObjectStore, dest: ObjectStore, config: dict[str, Any],
                     pointer: dict[str, Any] | None = None) -> int:
    """PBT exploit: replace dest's checkpoints by one of source's. Returns its step.

    The checkpoint is the one at the pointer's step, where PBT compared the trials, while it verifies; else (retention
    deleted it) source's newest verified one. Not the newest regardless: the donor trains on while this trial's
    workers start, and would hand over a model judged at no perturbation, often its last."""
    last_error: Exception | None = None
    wanted = int(pointer["step"]) if pointer and pointer.get("step") else None
    for _ in range(CLONE_ATTEMPTS):  # the source trial keeps training: retention may delete what we copy
        if wanted is not None and _committed(source, wanted):
            step = wanted
        else:
            manifest = checkpoints.latest_verified(source)
            if manifest is None:
                raise StorageError(f"PBT: trial store {source.uri} has no verified checkpoint to clone.")
            step = int(manifest["step"])
        try:
            _copy_checkpoint(source, dest, step)
        except StorageError as exc:
            last_error = exc
            continue
        events = _pbt_events(dest)
        events.append({"time": utc_now(), "cloned_from": source.uri, "step": step, "config": config,
                       "pointer": pointer})
        dest.put_bytes(PBT_FILE, json.dumps(events, indent=2).encode())
        return step
    raise StorageError(f"PBT: could not clone a checkpoint of {source.uri}: {last_error}")


def _committed(source: ObjectStore, step: int, timeout_s: float = COMMIT_WAIT_S) -> bool:
    """Whether checkpoint `step` of source verifies, waiting while it may still be uploading: a trial reports a
    checkpoint step as its save starts. False at once when a newer one verifies (retention deleted this one)."""
    deadline = time.monotonic() + timeout_s
    while not checkpoints.verify_checkpoint(source, step).ok:
        newest = checkpoints.latest_verified(source)
        if (newest is not None and int(newest["step"]) > step) or time.monotonic() > deadline:
            return False
        time.sleep(0.5)  # polling storage: the upload's commit is visible nowhere else
    return True


def _copy_checkpoint(source: ObjectStore, dest: ObjectStore, step: int) -> None:
    prefix = checkpoints.step_prefix(step)
    manifest_key = checkpoints.manifest_key(step)
    dest.delete_prefix(checkpoints.CHECKPOINTS_DIR + "/")
    with tempfile.TemporaryDirectory(prefix="orch-pbt-") as tmp:
        keys = [info.key for info in source.list(prefix) if info.key != manifest_key]
        for key in [*keys, manifest_key]:  # the manifest last: the copy is committed only when complete
            local = Path(tmp) / key
            source.get_file(key, local)
            dest.put_file(key, local)
    if not checkpoints.verify_checkpoint(dest, step, deep=True).ok:
        dest.delete_prefix(prefix + "/")
        raise StorageError(f"the copy of checkpoint step {step} does not verify")
