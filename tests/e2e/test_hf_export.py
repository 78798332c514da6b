"""`orch export --format hf` and `orch generate` through the CLI on one small ZeRO-3 gpt job: transformers alone,
in a fresh process, reproduces the job's last eval loss; greedy generation repeats, from the job and the export."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.control.hf_fresh import load_in_fresh_process
from tests.e2e.conftest import metrics_rows
from tests.gpt_eval import gpt_eval_batches

pytestmark = [pytest.mark.e2e, pytest.mark.e2e_timeout(900)]
STEPS = 20


def test_hf_export_matches_eval_loss_and_generates(orch, tmp_path):
    job_id, _ = orch.submit("jobs/examples/gpt-zero3.yaml", f"train.steps={STEPS}", f"train.eval_every={STEPS}",
                            "checkpoint.every_steps=0", "name=hf-export")
    model_dir = tmp_path / "hf"
    orch.run("export", job_id, "--format", "hf", "--out", str(model_dir), "--max-shard-size", "100KB")
    assert (model_dir / "model.safetensors.index.json").is_file() and not (tmp_path / "hf.partial").exists()

    # The job's own evaluation at its last step (each of the 2 ranks' eval batches), scored by transformers alone.
    spec = yaml.safe_load((orch.storage / "jobs" / job_id / "spec.yaml").read_text())
    xs, ys = gpt_eval_batches(spec, STEPS, 2)
    got = load_in_fresh_process([{"dir": str(model_dir), "ids": xs, "targets": ys, "logits": False}],
                                tmp_path / "fresh")[str(model_dir)]
    final = [r for r in metrics_rows(orch.storage / "jobs" / job_id) if r.get("final")][-1]
    assert got["class"] == "GPT2LMHeadModel"
    assert got["target_loss"] == pytest.approx(final["eval_loss"], abs=1e-4)

    args = ["--prompt", "The ", "--temperature", "0", "--max-new-tokens", "12", "--json"]
    from_job = [json.loads(orch.run("generate", job_id, *args).stdout) for _ in range(2)]
    from_dir = json.loads(orch.run("generate", str(model_dir), *args).stdout)
    assert from_job[0] == from_job[1] == from_dir
    assert from_dir["text"].startswith("The ") and len(from_dir["tokens"]) == 12
    assert orch.run("export", job_id, "--format", "hf", "--out", str(model_dir), check=False).returncode == 2
