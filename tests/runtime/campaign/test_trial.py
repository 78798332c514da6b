"""Trial-side storage work: PBT's checkpoint clone between trial stores, the re-announced last report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.core import checkpoints as ckpt
from orchestrator.runtime.campaign.trial import (
    adopt_checkpoint,
    already_adopted,
    last_report,
    trial_job_id,
    trial_store,
)
from orchestrator.storage import LocalStore, StorageError


def _commit(store: LocalStore, step: int, tmp: Path, payload: bytes) -> None:
    """A two-file checkpoint committed through the real protocol."""
    entries = []
    for name in ("model.pt", "optim/state.pt"):
        local = tmp / f"{step}-{name.replace('/', '-')}"
        local.write_bytes(payload + name.encode())
        store.put_file(f"{ckpt.step_prefix(step)}/{name}", local)
        entries.append(ckpt.file_entry(local, name))
    ckpt.write_rank_part(store, step, 0, entries)
    assert ckpt.try_commit(store, step, 1, {"loss": 1.0}, "hash") is not None


def test_adopt_checkpoint_replaces_the_trials_checkpoints_with_the_sources_newest(tmp_path):
    source, dest = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _commit(source, 20, tmp_path, b"a20")
    _commit(source, 40, tmp_path, b"a40")
    _commit(dest, 60, tmp_path, b"b60")  # newer than the source's: must not survive, or it would be restored
    step = adopt_checkpoint(source, dest, {"train.l2": 0.001})
    assert step == 40
    assert [c.step for c in ckpt.list_checkpoints(dest)] == [40]
    assert ckpt.verify_checkpoint(dest, 40, deep=True).ok
    assert dest.get_bytes(f"{ckpt.step_prefix(40)}/optim/state.pt") == b"a40optim/state.pt"
    events = json.loads(dest.get_bytes("pbt.json"))
    assert events[0]["cloned_from"] == source.uri and events[0]["step"] == 40
    assert events[0]["config"] == {"train.l2": 0.001}


def test_adopt_checkpoint_takes_the_step_pbt_compared_at_while_it_exists(tmp_path):
    source, dest = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    for step in (20, 40, 60):
        _commit(source, step, tmp_path, f"a{step}".encode())
    assert adopt_checkpoint(source, dest, {}, {"trial_store": source.uri, "step": 40}) == 40
    assert dest.get_bytes(f"{ckpt.step_prefix(40)}/model.pt") == b"a40model.pt"
    # Retention deleted it meanwhile: the newest verified one instead.
    assert adopt_checkpoint(source, dest, {}, {"trial_store": source.uri, "step": 30}) == 60
    assert [c.step for c in ckpt.list_checkpoints(dest)] == [60]


def test_a_pointer_already_cloned_is_not_cloned_again(tmp_path):
    # A resumed campaign hands the trial the donor's pointer again until the trial reports its own checkpoint.
    source, dest = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    _commit(source, 20, tmp_path, b"a20")
    pointer = {"trial_store": source.uri, "step": 20}
    assert not already_adopted(dest, pointer)
    adopt_checkpoint(source, dest, {"train.l2": 0.001}, pointer)
    assert already_adopted(dest, pointer)
    assert not already_adopted(dest, {"trial_store": source.uri, "step": 40})  # a newer exploit clones again


def test_adopt_checkpoint_without_a_verified_source_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(StorageError, match="no verified checkpoint to clone"):
        adopt_checkpoint(LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b"), {})


def test_last_report_merges_the_newest_numbers(tmp_path):
    store = LocalStore(tmp_path)
    rows = [{"step": 10, "loss": 0.5, "time": "t"}, {"step": 20, "loss": 0.4, "eval_loss": 0.6},
            {"step": 20, "final": True, "final_loss": 0.4}]
    store.put_bytes("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    assert last_report(store) == {"step": 20, "loss": 0.4, "eval_loss": 0.6, "final_loss": 0.4}


def test_trial_stores_and_job_ids(tmp_path):
    store = trial_store(LocalStore(tmp_path).uri, "ab12c_00003")
    assert store.uri == (tmp_path / "trials" / "ab12c_00003").as_uri()
    assert trial_job_id("tune-1", "ab12c_00003") == "tune-1-ab12c_00003"
