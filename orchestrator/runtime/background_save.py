"""Write a checkpoint's files from a forked copy of the worker, so training goes on while they are written.

DeepSpeed's `save_checkpoint` builds each file's state dict (references to the live master weights and optimizer
moments, no copies) and hands it to its checkpoint engine. `DeferredCheckpointEngine` only collects them; the
writer then forks, and the child, which sees the states exactly as they were at the fork (copy-on-write), writes
the files while the parent trains on. At a billion parameters on 2 workers that is ~6 GB per worker, which the
training thread used to copy into the page cache itself (5-6 s a checkpoint); the fork takes ~0.1 s.

Copy-on-write costs memory only for the pages the parent writes before the child is done. The states are written
only by the optimizer step, so the parent waits for the child before its next optimizer step
(`BackgroundWrite.result`, from a pre-step hook): what the two processes share is never copied wholesale.

Not used where a state lives on a GPU (CUDA does not survive a fork) or off Linux: those files are written in the
worker itself, as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from orchestrator.runtime.host_memory import libc

PR_SET_PDEATHSIG = 1
# The child reports through a pipe: "ok", or the error that stopped it, cut to this many bytes.
MAX_ERROR_BYTES = 4000


class LocalSaveError(RuntimeError):
    """A checkpoint's files could not be written to the worker's local disk."""


class DeferredCheckpointEngine:
    """Stands in for a DeepSpeed engine's checkpoint engine: `save` only records what to write (`take_pending`
    hands it over); everything else, loads included, is the wrapped engine's."""

    def __init__(self, inner: Any):
        self.inner = inner
        # DeepSpeed's torch engine: whether torch.save writes its zip format (DeepSpeed's config decides).
        self.zip_serialization = bool(getattr(inner, "zipfile_serialization", True))
        self._pending: list[tuple[Any, str]] = []

    def save(self, state_dict: Any, path: str) -> None:
        self._pending.append((state_dict, path))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def take_pending(self) -> list[tuple[Any, str]]:
        pending, self._pending = self._pending, []
        return pending


def write_files(files: list[tuple[Any, str]], zip_serialization: bool) -> None:
    for state, path in files:
        torch.save(state, path, _use_new_zipfile_serialization=zip_serialization)


def can_fork_for(files: list[tuple[Any, str]]) -> bool:
    """Fork only on Linux (the child must die with its parent) and only when every tensor is in host memory."""
    return sys.platform.startswith("linux") and all(t.device.type == "cpu" for t in _tensors(files))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


class BackgroundWrite:
    """One forked child writing `files`. `result()` waits for it (once, from whichever thread asks first) and
    raises LocalSaveError if it failed."""

    def __init__(self, files: list[tuple[Any, str]], zip_serialization: bool):
        self.started = time.perf_counter()
        self.seconds: float | None = None  # how long the child took, once known
        self._lock = threading.Lock()
        self._error: str | None = None
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the child: write, report, and leave without running any of the worker's exit code
            os.close(read_fd)
            _child(files, zip_serialization, write_fd, parent)
        os.close(write_fd)
        self._read_fd: int | None = read_fd

    def result(self) -> None:
        with self._lock:
            if self._read_fd is not None:
                self._error = self._collect(self._read_fd)
                self._read_fd = None
                self.seconds = time.perf_counter() - self.started
        if self._error is not None:
            raise LocalSaveError(self._error)

    def _collect(self, read_fd: int) -> str | None:
        chunks = []
        while chunk := os.read(read_fd, 65536):  # EOF when the child exits, however it exits
            chunks.append(chunk)
        os.close(read_fd)
        with contextlib.suppress(ChildProcessError):  # a runtime that reaps children itself leaves no status
            os.waitpid(self.pid, 0)
        message = b"".join(chunks).decode(errors="replace")
        if message == "ok":
            return None
        return message or "the process writing the checkpoint ended before it finished (killed?)"


def _child(files: list[tuple[Any, str]], zip_serialization: bool, status_fd: int, parent: int) -> None:
    code = 1
    try:
        _die_with_parent(parent)
        write_files(files, zip_serialization)
        os.write(status_fd, b"ok")
        code = 0
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent, nothing escapes the child
        with contextlib.suppress(OSError):
            os.write(status_fd, f"{type(exc).__name__}: {exc}".encode()[:MAX_ERROR_BYTES])
    finally:
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """A SIGKILLed worker must not leave its child writing GBs into a staging dir the next attempt clears."""
    libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above: nobody will collect this write
        os._exit(1)
