"""Other libraries' chatter, kept where it belongs.

In the `orch` process: what DeepSpeed and friends print while we call them (the "Setting accelerator to
CPU" notice, checkpoint-conversion progress bars, their warnings) is not our output; it is hidden unless
`--verbose`, and never lands on stdout, which carries the command's result (tables, --json).

In the training worker: known warnings that say nothing to a user are filtered by message, one by one,
so any other warning still shows.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator

_verbose = False

# (message regex, category): each a warning every job would print and no user can act on.
KNOWN_WORKER_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # DeepSpeed's ZeRO collectives call these on every step; torch suggests *_single APIs that DeepSpeed
    # does not use yet. Printed per call, per rank (~130 times in a short run).
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning),
    (r"`torch\.distributed\.reduce_scatter_tensor` is deprecated", FutureWarning),
)


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """Around calls into third-party code from the CLI: their prints, logs and warnings go to stderr with
    --verbose, and nowhere otherwise. (DeepSpeed's logger binds the stdout of the moment it is first
    imported, so importing it in here keeps its later messages out of stdout too.)"""
    if _verbose:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


@contextlib.contextmanager
def deepspeed_quietly_on_cpu() -> Iterator[None]:
    """Around importing or calling DeepSpeed in an operator's command (export, predict, checkpoint loading): CPU
    work, so DS_ACCELERATOR=cpu for the block unless the caller set one (set only for the block: in an SDK user's
    process it would otherwise stay, and reach every process started from it), and its output as library_output."""
    preset = "DS_ACCELERATOR" in os.environ
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        with library_output():
            yield
    finally:
        if not preset:
            os.environ.pop("DS_ACCELERATOR", None)


def silence_known_worker_warnings() -> None:
    for message, category in KNOWN_WORKER_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
