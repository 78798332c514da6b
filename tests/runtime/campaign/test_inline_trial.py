"""A single-worker trial trained in its own process: the job's worker code, a one-process gloo group, reports to a
callback. Run in a fresh interpreter each (DeepSpeed keeps process-wide state), with a real engine and store."""

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

# argv: store root, the step whose report raises SystemExit (as Tune's report does for a stopped trial; 0: none).
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
stop_at = int(sys.argv[2])
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
print(json.dumps({"outcome": outcome, "steps": [r["step"] for r in rows], "losses": [r["loss"] for r in rows],
                  "group_left": dist.is_initialized()}))
"""


def _train(store_root: Path, stop_at: int = 0) -> dict:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(EXTENSIONS),
           "PYTHONPATH": str(REPO_ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(store_root), str(stop_at)], cwd=REPO_ROOT, env=env,
                          text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_trial_trains_in_its_process_stops_at_the_report_tune_stopped_it_and_resumes(tmp_path):
    store = LocalStore(tmp_path / "trial")
    stopped = _train(tmp_path / "trial", stop_at=4)
    # Tune's SystemExit out of the step-4 report ends training right there, and takes the process group down.
    assert stopped == {**stopped, "outcome": "stopped", "steps": [1, 2, 4], "group_left": False}
    assert checkpoints.latest_verified(store)["step"] == 2  # step 4 was reported before its save: never saved
    assert max(row["step"] for row in read_metrics(store)) == 4

    # Started again (Tune restarting the trial), it continues from its newest checkpoint to the end.
    resumed = _train(tmp_path / "trial")
    assert resumed["outcome"] == "returned" and resumed["steps"] == [4, 6] and not resumed["group_left"]
    assert resumed["losses"][0] == pytest.approx(stopped["losses"][2], rel=1e-6)  # step 4 again, from step 2's state
    assert checkpoints.latest_verified(store)["step"] == 6
    rows = read_metrics(store)
    assert rows[-1]["final"] is True and "eval_accuracy" in rows[-1]
