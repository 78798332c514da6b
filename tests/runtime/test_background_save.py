"""Checkpoint files written by a forked child: what it writes is the state at the fork, its failures reach the
training thread, the optimizer step waits for it (and that wait is the checkpoint's stall), and a killed worker
takes it along."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.core import checkpoints
from orchestrator.core.spec import CheckpointSpec
from orchestrator.runtime.background_save import BackgroundWrite, LocalSaveError, can_fork_for
from orchestrator.runtime.checkpoint_writer import CheckpointWriter
from orchestrator.storage import open_store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forked write is Linux-only")


class Gate:
    """Pickles only once a byte arrives on `fd`: holds the child mid-write until the test lets it go."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        os.read(self.fd, 1)
        return int, (0,)


class FakeCheckpointEngine:
    zipfile_serialization = True

    def __init__(self) -> None:
        self.saved: list[str] = []

    def save(self, state_dict: Any, path: str) -> None:  # the in-worker write this replaces
        torch.save(state_dict, path)
        self.saved.append(path)


class FakeEngine:
    """Hands its states to its checkpoint engine, as DeepSpeed's save_checkpoint does."""

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.checkpoint_engine: Any = FakeCheckpointEngine()

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict[str, Any], save_latest: bool) -> None:
        self.checkpoint_engine.save({**self.state, **client_state}, f"{save_dir}/{tag}/optim_states.pt")


def test_the_child_writes_the_states_as_they_were_at_the_fork(tmp_path: Path) -> None:
    weights = torch.arange(1000, dtype=torch.float32)
    write = BackgroundWrite([({"w": weights}, str(tmp_path / "a.pt"))], zip_serialization=True)
    weights.add_(1.0)  # the next optimizer step, in the parent, while or before the child writes
    write.result()
    assert torch.equal(torch.load(tmp_path / "a.pt")["w"], torch.arange(1000, dtype=torch.float32))
    assert write.seconds is not None and write.seconds > 0


def test_a_failed_write_reaches_the_parent_with_its_reason(tmp_path: Path) -> None:
    write = BackgroundWrite([({"w": torch.ones(3)}, str(tmp_path / "missing" / "a.pt"))], zip_serialization=True)
    for _ in range(2):  # every caller learns it, not just the first
        with pytest.raises(LocalSaveError, match="missing"):
            write.result()


def test_only_host_memory_states_are_written_by_a_fork() -> None:
    assert can_fork_for([({"w": torch.ones(2), "m": [torch.zeros(1)]}, "x")])
    assert not can_fork_for([({"w": torch.ones(2), "m": [torch.empty(1, device="meta")]}, "x")])


def test_the_optimizer_step_waits_for_the_write_and_the_wait_is_the_checkpoints_stall(tmp_path: Path) -> None:
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([param], lr=0.5)
    gate_read, gate_write = os.pipe()
    engine = FakeEngine({"w": param.detach(), "gate": Gate(gate_read)})
    store = open_store(f"file://{tmp_path / 'store'}")
    writer = CheckpointWriter(store, rank=0, world_size=1, local_root=tmp_path / "local", spec_hash="h",
                              policy=CheckpointSpec(keep_latest=0))
    writer.attach(engine, optimizer)
    writer.save(engine, step=3, metrics={"loss": 2.0}, client_state={"step": 3})
    assert engine.checkpoint_engine.inner.saved == []  # the worker itself wrote nothing
    save_stall = writer.stall_seconds[3]

    param.grad = torch.ones(4)
    stepped = threading.Thread(target=optimizer.step)
    stepped.start()
    stepped.join(timeout=1.0)
    assert stepped.is_alive(), "the optimizer stepped while the checkpoint was still being written"
    os.write(gate_write, b"x")
    stepped.join(timeout=30)
    assert not stepped.is_alive()
    assert torch.equal(param.detach(), torch.full((4,), 0.5))

    [(step, stall, write_s)] = writer.settled()
    assert step == 3 and stall == writer.stall_seconds[3] and stall >= save_stall + 1.0 and write_s >= 1.0
    writer.close()
    manifest = checkpoints.read_manifest(store, 3)
    assert [f["path"] for f in manifest["files"]] == ["optim_states.pt"]
    restored = checkpoints.download_checkpoint(store, 3, tmp_path / "restored")
    assert restored is None or True  # the call's return is not what is checked: the file is
    saved = torch.load(tmp_path / "restored" / "optim_states.pt", weights_only=False)
    assert torch.equal(saved["w"], torch.ones(4)) and saved["step"] == 3 and saved["gate"] == 0


def test_a_failed_background_write_fails_the_next_step_and_uploads_nothing(tmp_path: Path) -> None:
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    engine = FakeEngine({"w": param.detach(), "bad": lambda: None})  # a lambda cannot be pickled
    store = open_store(f"file://{tmp_path / 'store'}")
    writer = CheckpointWriter(store, rank=0, world_size=1, local_root=tmp_path / "local", spec_hash="h",
                              policy=CheckpointSpec(keep_latest=0))
    writer.attach(engine, optimizer)
    writer.save(engine, step=1, metrics={}, client_state={})
    param.grad = torch.ones(2)
    with pytest.raises(LocalSaveError, match="pickle"):
        optimizer.step()
    writer.close()
    assert store.list("checkpoints/") == []


KILLED_WORKER = """
import os, signal, sys, torch
from orchestrator.runtime.background_save import BackgroundWrite
sys.path.insert(0, {tests!r})
from runtime.test_background_save import Gate
gate_read, _ = os.pipe()  # never written: the child blocks mid-write
write = BackgroundWrite([({{"g": Gate(gate_read)}}, {path!r})], zip_serialization=True)
print(write.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_worker_takes_its_writing_child_with_it(tmp_path: Path) -> None:
    script = KILLED_WORKER.format(tests=str(Path(__file__).parents[1]), path=str(tmp_path / "a.pt"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), f"the writing child {child} outlived its killed parent"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its reaper has not collected it
