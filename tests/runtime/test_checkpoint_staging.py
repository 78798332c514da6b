"""The worker's local staging of checkpoints: a killed attempt's leftovers are removed when the rank starts again,
and a finished rank leaves nothing behind on the node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.core import checkpoints
from orchestrator.core.spec import CheckpointSpec
from orchestrator.runtime.checkpoint_writer import CheckpointWriter
from orchestrator.storage import open_store


class FakeEngine:
    """Writes what DeepSpeed's save_checkpoint would: one file per rank under the tag."""

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict[str, Any], save_latest: bool) -> None:
        (Path(save_dir) / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"optimizer states")


def writer(tmp_path: Path, local_root: Path) -> CheckpointWriter:
    store = open_store(f"file://{tmp_path / 'store'}")
    return CheckpointWriter(store, rank=0, world_size=1, local_root=local_root, spec_hash="h",
                            policy=CheckpointSpec(keep_latest=0))


def test_a_killed_attempts_staging_is_removed_and_not_uploaded(tmp_path: Path) -> None:
    local_root = tmp_path / "orch-checkpoints" / "job-1"
    stale = local_root / "rank-0" / "step-000002"
    stale.mkdir(parents=True)
    (stale / "half-written.pt").write_bytes(b"x" * 1024)  # SIGKILLed mid-save

    w = writer(tmp_path, local_root)
    assert not (local_root / "rank-0").exists()
    w.save(FakeEngine(), step=2, metrics={"loss": 1.0}, client_state={})
    w.close()

    manifest = checkpoints.read_manifest(w.store, 2)
    assert [f["path"] for f in manifest["files"]] == ["zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    assert not local_root.exists()  # the job's directory goes too: nothing piles up in the node's temp dir


def test_the_jobs_directory_stays_while_another_rank_uses_it(tmp_path: Path) -> None:
    local_root = tmp_path / "orch-checkpoints" / "job-2"
    other_rank = local_root / "rank-1"
    other_rank.mkdir(parents=True)
    w = writer(tmp_path, local_root)
    w.save(FakeEngine(), step=1, metrics={}, client_state={})
    w.close()
    assert not (local_root / "rank-0").exists() and other_rank.is_dir()
