"""The mlp workload end to end: train on digits, then classify with `orch predict` from storage and from an export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.e2e.conftest import metrics_rows

pytestmark = pytest.mark.e2e


def test_mlp_digits_trains_and_predicts_from_storage_and_export(orch, tmp_path):
    job_id, _ = orch.submit("jobs/examples/mlp-digits.yaml", "train.steps=150", "train.eval_every=50",
                            "checkpoint.every_steps=50")
    final = [r for r in metrics_rows(orch.storage / "jobs" / job_id) if r.get("final")][-1]
    assert final["eval_accuracy"] > 0.9

    from_store = json.loads(orch.run("predict", job_id, "--json").stdout)
    # The job evaluates the whole validation split, so the saved model reproduces its reported accuracy.
    assert from_store["n"] == 360
    assert from_store["accuracy"] == pytest.approx(final["eval_accuracy"], abs=1e-9)

    model = tmp_path / "mlp.pt"
    orch.run("export", job_id, "--out", str(model))
    from_export = json.loads(orch.run("predict", job_id, "--model", str(model), "--json").stdout)
    assert from_export["predictions"] == from_store["predictions"]

    from sklearn.datasets import load_digits

    raw = load_digits().data[:5].astype(np.float64)
    np.save(tmp_path / "five.npy", raw)
    five = json.loads(orch.run("predict", job_id, "--model", str(model), "--input", str(tmp_path / "five.npy"),
                               "--json").stdout)
    assert five["n"] == 5 and "accuracy" not in five
    assert sum(p == t for p, t in zip(five["predictions"], load_digits().target[:5], strict=True)) >= 4
