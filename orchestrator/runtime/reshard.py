"""Restoring a ZeRO checkpoint on a different number of workers, through DeepSpeed's universal checkpoint.

A ZeRO checkpoint holds one optimizer shard per rank, laid out for the world size that wrote it. When a job
continues on another worker count (`orch resume JOB --set scaling.num_workers=N`, or a Ray Train restart with
fewer or more workers), each rank converts its downloaded copy of the checkpoint with DeepSpeed's
`ds_to_universal` (every parameter's fp32 weights and Adam moments, whole, one file each) and loads that with
`checkpoint.load_universal`, which cuts them again for the new world size. The committed checkpoint in storage
is never touched: the conversion reads the local download and writes next to it. Same world size: nothing of
this runs, the checkpoint loads as written.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from argparse import Namespace
from pathlib import Path
from typing import Any

from orchestrator.core import checkpoints
from orchestrator.storage import ObjectStore


def universal_config(config: dict[str, Any]) -> dict[str, Any]:
    """A DeepSpeed config whose engine loads universal checkpoints (its saves stay the usual ZeRO format)."""
    return {**config, "checkpoint": {**config.get("checkpoint", {}), "load_universal": True}}


def convert_to_universal(step_dir: Path) -> Path:
    """Convert one downloaded ZeRO checkpoint (`<root>/<tag>`) into `<root>-universal/<tag>`; returns that root.

    Runs in this process, one file at a time (no process pool inside a Ray worker). ZeRO-1/2 checkpoints of a
    plain model lack the `universal_checkpoint_info` DeepSpeed asks for, so the converter adds it.
    """
    from deepspeed.checkpoint import ds_to_universal

    root = step_dir.parent.with_name(step_dir.parent.name + "-universal")
    shutil.rmtree(root, ignore_errors=True)
    out = root / step_dir.name
    out.mkdir(parents=True)
    args = Namespace(input_folder=str(step_dir), output_folder=str(out), num_extract_workers=1,
                     num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines and bars, per parameter
        ds_to_universal.main(args)
    return root


def saved_world_size(store: ObjectStore, step: int) -> int:
    """How many workers wrote a committed checkpoint (its manifest says)."""
    return int(checkpoints.read_manifest(store, step)["world_size"])
