"""Checkpoint files are data: export/predict read real ZeRO 0-3 checkpoints weights-only, and a crafted shard
(with a matching MANIFEST) is refused before its payload can run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from orchestrator.control import safe_load
from orchestrator.control.export import consolidated_state_dict
from orchestrator.core import checkpoints as ck
from orchestrator.core.errors import OrchError
from orchestrator.core.spec import load_spec_file
from orchestrator.storage import ObjectStore, open_store
from tests.control.zero_checkpoints import STEP_TAG
from tests.paths import REPO_ROOT

STAGES = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zero")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DS_ACCELERATOR": "cpu",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                  str(Path.home() / ".cache" / "orch-torch-extensions"))}
    subprocess.run([sys.executable, "-m", "tests.control.zero_checkpoints", str(out)], env=env, check=True,
                   capture_output=True, timeout=600)
    return out


def commit(store: ObjectStore, src: Path) -> None:
    """What a worker does with its saved files: upload, rank part, manifest last."""
    entries = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        store.put_file(f"{ck.step_prefix(1)}/{rel}", path)
        entries.append(ck.file_entry(path, rel))
    ck.write_rank_part(store, 1, 0, entries)
    assert ck.try_commit(store, 1, 1, {"loss": 1.0}, "spec-hash") is not None


class Payload:
    """What an attacker stores: unpickling it runs a command (here: creates a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def plant(src: Path, marker: Path) -> None:
    """Rewrite the checkpoint's model-states file with the payload beside the real content."""
    name = next(p for p in src.iterdir() if p.name.endswith("model_states.pt"))
    state = torch.load(name, weights_only=False)  # our own trusted test file
    state["extra"] = Payload(marker)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    name.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("stage", STAGES)
def test_every_zero_stage_consolidates_reading_weights_only(saved, tmp_path, stage):
    store = open_store(str(tmp_path / "storage")).child("jobs/j")
    commit(store, saved / f"zero{stage}" / STEP_TAG)
    state = consolidated_state_dict(store, 1)
    expected = torch.load(saved / f"zero{stage}" / "expected.pt", weights_only=True)
    assert state.keys() == expected.keys()
    assert all(torch.allclose(state[k], expected[k].float()) for k in expected)


@pytest.mark.parametrize("stage", STAGES)
def test_allow_list_covers_what_deepspeed_stores_and_nothing_runs_code(saved, stage):
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_load.allowed_globals()}
    for path in (saved / f"zero{stage}" / STEP_TAG).iterdir():
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) <= allowed


@pytest.mark.parametrize("stage", [0, 3])
def test_crafted_shard_with_matching_manifest_is_refused_and_never_runs(saved, tmp_path, stage):
    src = tmp_path / "src"
    import shutil

    shutil.copytree(saved / f"zero{stage}" / STEP_TAG, src)
    marker = tmp_path / "pwned"
    plant(src, marker)
    store = open_store(str(tmp_path / "storage")).child("jobs/j")
    commit(store, src)
    assert ck.verify_checkpoint(store, 1, deep=True).ok  # the hashes match: only the loader can refuse it
    with pytest.raises(OrchError, match="Refusing to load checkpoint file .*model_states.pt.*posix.system"):
        consolidated_state_dict(store, 1)
    assert not marker.exists()


def test_orch_export_after_sync_refuses_a_crafted_checkpoint(saved, tmp_path):
    """The reported path: someone writes shards + MANIFEST, the operator syncs and exports."""
    storage = tmp_path / "storage"
    job = open_store(str(storage)).child("jobs/planted-1")
    spec = load_spec_file(REPO_ROOT / "jobs" / "examples" / "gpt-zero3.yaml", []).redacted()
    job.put_bytes("spec.yaml", yaml.safe_dump(spec).encode())
    job.put_bytes("result.json", json.dumps({"status": "SUCCEEDED", "reason": ""}).encode())
    old = time.time() - 3600
    os.utime(storage / "jobs" / "planted-1" / "spec.yaml", (old, old))
    src = tmp_path / "src"
    import shutil

    shutil.copytree(saved / "zero3" / STEP_TAG, src)
    marker = tmp_path / "pwned"
    plant(src, marker)
    commit(job, src)
    env = {**os.environ, "ORCH_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("ORCH_RAY_ADDRESS", None)

    def orch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, capture_output=True,
                              text=True, timeout=300)

    synced = orch("sync", "--storage", str(storage))
    assert synced.returncode == 0, synced.stderr
    exported = orch("export", "planted-1", "--out", str(tmp_path / "model.pt"))
    assert exported.returncode == 2
    assert "Refusing to load checkpoint file" in exported.stderr and "Traceback" not in exported.stderr
    assert not marker.exists() and not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("stage", [0, 2, 3])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_lazy_consolidation_writes_both_file_formats(saved, tmp_path, stage, fmt):
    from safetensors.torch import load_file

    from orchestrator.control.export import open_consolidated, save_state_dict

    store = open_store(str(tmp_path / "storage")).child("jobs/j")
    commit(store, saved / f"zero{stage}" / STEP_TAG)
    out = tmp_path / f"model.{fmt}"
    with open_consolidated(store, 1) as state:
        assert all(t.dtype == torch.float32 and t.numel() == t.shape.numel() for t in state.values())
        save_state_dict(state, out, fmt)
    loaded = load_file(str(out)) if fmt == "safetensors" else torch.load(out, weights_only=True)
    expected = torch.load(saved / f"zero{stage}" / "expected.pt", weights_only=True)
    assert loaded.keys() == expected.keys() and not out.with_name(out.name + ".partial").exists()
    assert all(loaded[k].dtype == torch.float32 and torch.allclose(loaded[k], expected[k].float()) for k in expected)
