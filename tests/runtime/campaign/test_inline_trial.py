"""A single-worker trial trained in its own process: the job's worker code, a one-process gloo group, reports to a
callback. Two trainings in one fresh interpreter, as Tune hands a trial's process on to the next trial (DeepSpeed
keeps process-wide state), with a real engine and store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core import checkpoints
from orchestrator.core.run import read_metrics
from orchestrator.storage import LocalStore
from tests.paths import REPO_ROOT

EXTENSIONS = Path(os.environ.get("ORCH_TEST_EXTENSIONS_DIR", Path.home() / ".cache" / "orch-torch-extensions"))

# argv: store root. The first training's step-4 report raises SystemExit, as Tune's report does for a stopped trial;
# the second continues the same trial in the same process, as when Tune restarts it.
SCRIPT = r"""
import json, sys
import torch.distributed as dist
from orchestrator.core.spec import apply_overrides, load_spec_file, parse_spec
from orchestrator.runtime.campaign.inline_trial import train_in_this_process
from orchestrator.storage import LocalStore

data = load_spec_file("jobs/examples/mlp-digits.yaml").model_dump(mode="json")
data = apply_overrides(data, ["scaling.num_workers=1", "train.steps=6", "train.warmup_steps=0", "train.report_every=2",
                              "train.eval_every=0", "train.eval_batches=1", "checkpoint.every_steps=2",
                              "checkpoint.keep_latest=5", "checkpoint.keep_best=0"])
spec = parse_spec(data)

def train(stop_at):
    rows = []

    def report(row):
        rows.append(row)
        if row["step"] == stop_at:
            sys.exit(0)

    outcome = "returned"
    try:
        train_in_this_process(spec, "trial-x", LocalStore(sys.argv[1]).uri, report)
    except SystemExit:
        outcome = "stopped"
    return {"outcome": outcome, "steps": [r["step"] for r in rows], "losses": [r["loss"] for r in rows],
            "world": dist.get_world_size()}

print(json.dumps([train(4), train(0)]))
"""


def _train_twice(store_root: Path) -> list[dict]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(EXTENSIONS),
           "PYTHONPATH": str(REPO_ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(store_root)], cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_trial_trains_in_its_process_stops_at_the_report_tune_stopped_it_and_resumes_in_the_same_process(tmp_path):
    store = LocalStore(tmp_path / "trial")
    stopped, resumed = _train_twice(tmp_path / "trial")
    # Tune's SystemExit out of the step-4 report ends training right there.
    assert stopped == {**stopped, "outcome": "stopped", "steps": [1, 2, 4], "world": 1}
    assert max(row["step"] for row in read_metrics(store)) == 6  # (the first training's rows were replaced)
    # Started again in the same process (Tune restarting the trial, or handing the process to a trial), it builds
    # a new engine in the same group and continues from the newest checkpoint, step 2 (step 4 was stopped before its
    # save).
    assert resumed["outcome"] == "returned" and resumed["steps"] == [4, 6] and resumed["world"] == 1
    assert resumed["losses"][0] == pytest.approx(stopped["losses"][2], rel=1e-6)  # step 4 again, from step 2's state
    assert checkpoints.latest_verified(store)["step"] == 6
    rows = read_metrics(store)
    assert rows[-1]["final"] is True and "eval_accuracy" in rows[-1]
    restored = [json.loads((tmp_path / "trial" / "attempts" / name).read_text())["restored_step"]
                for name in sorted(os.listdir(tmp_path / "trial" / "attempts"))]
    assert restored == [0, 2]
