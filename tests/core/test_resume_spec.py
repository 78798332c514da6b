"""What `orch resume JOB --set ...` may change, and the global batch it keeps when the worker count changes."""

from __future__ import annotations

import pytest

from orchestrator.core.errors import SpecError
from orchestrator.core.resume_spec import resume_spec

STORED = {"name": "r", "workload": "gpt", "scaling": {"num_workers": 2},
          "deepspeed": {"zero_stage": 3, "micro_batch_size": 8, "gradient_accumulation_steps": 1}}


@pytest.mark.parametrize("workers, accum, note", [
    (1, 2, "deepspeed.gradient_accumulation_steps 1 -> 2: the global batch stays 2 micro batches of 8 per step"),
    (2, 1, None),
])
def test_fewer_workers_keep_the_global_batch_through_accumulation(workers, accum, note) -> None:
    spec, notes = resume_spec(STORED, [f"scaling.num_workers={workers}"], "job r spec")
    assert spec.scaling.num_workers == workers and spec.deepspeed.gradient_accumulation_steps == accum
    assert (note in notes) if note else notes == []


def test_more_workers_than_micro_batches_say_the_global_batch_changes() -> None:
    spec, notes = resume_spec(STORED, ["scaling.num_workers=3"], "job r spec")
    assert spec.deepspeed.gradient_accumulation_steps == 1
    assert any("global batch changes from 2 to 3 micro batches" in n for n in notes)
    assert any("resharded for 3 workers" in n for n in notes)
    spec, _ = resume_spec({**STORED, "deepspeed": {**STORED["deepspeed"], "gradient_accumulation_steps": 3}},
                          ["scaling.num_workers=3"], "job r spec")
    assert spec.deepspeed.gradient_accumulation_steps == 2  # 6 micro batches: 2 workers x 3 -> 3 workers x 2


def test_an_explicit_accumulation_is_kept() -> None:
    spec, _ = resume_spec(STORED, ["scaling.num_workers=1", "deepspeed.gradient_accumulation_steps=1"], "s")
    assert spec.deepspeed.gradient_accumulation_steps == 1


@pytest.mark.parametrize("override", ["train.lr=0.1", "model.n_layer=4", "deepspeed.zero_stage=2", "name=x"])
def test_anything_but_the_spread_over_workers_is_refused(override) -> None:
    key = override.partition("=")[0]
    with pytest.raises(SpecError, match=rf"--set '{key}' cannot change on resume.*scaling.num_workers"):
        resume_spec(STORED, [override], "job r spec")


def test_a_bad_value_names_the_field() -> None:
    with pytest.raises(SpecError, match="scaling.num_workers"):
        resume_spec(STORED, ["scaling.num_workers=0"], "job r spec")
