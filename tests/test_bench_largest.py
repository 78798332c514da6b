"""The "largest model trained here" benchmark's plan, checked without running it: the layer count it picks is the
edge of what the estimate fits, every run is a valid spec of the intended kind, and failed runs become rows."""

from __future__ import annotations

import pytest

from bench import bench_largest
from bench.bench_largest import Result, bytes_per_param, estimate_for, job_sets, largest_n_layer, physical_bound
from orchestrator.core.deepspeed_config import build_deepspeed_config
from orchestrator.core.estimate import GiB
from orchestrator.core.spec import load_spec_file

TINY = {"d_model": 256, "n_head": 4}


@pytest.mark.parametrize("stage", bench_largest.STAGES)
def test_chosen_n_layer_is_the_largest_that_the_estimate_fits(stage):
    budget = int(1.5 * GiB)
    n = largest_n_layer(stage, budget, **TINY)
    assert n > 1
    assert estimate_for(stage, n, **TINY).total <= budget < estimate_for(stage, n + 1, **TINY).total


def test_no_layer_fits_a_budget_below_the_runtime():
    assert largest_n_layer(3, 100 * 2**20, **TINY) == 0


def test_search_stops_at_its_limit():
    assert largest_n_layer(3, 10**15, limit=40, **TINY) == 40


def test_full_width_zero3_at_ten_gib_is_past_a_billion_parameters():
    n = largest_n_layer(3, 10 * GiB)
    assert estimate_for(3, n).params >= 1.0e9


@pytest.mark.parametrize("stage", bench_largest.STAGES)
def test_each_run_is_a_two_worker_bf16_ten_step_run_without_checkpoints(stage):
    spec = load_spec_file(bench_largest.REPO / bench_largest.SPEC, job_sets(stage, 3, **TINY))
    assert spec.deepspeed.zero_stage == stage and spec.deepspeed.precision == "bf16"
    assert spec.deepspeed.micro_batch_size == 1 and spec.deepspeed.activation_checkpointing
    assert spec.scaling.num_workers == 2 and spec.train.steps == 10 and spec.train.report_every == 1
    assert spec.checkpoint.every_steps == 0 and not spec.checkpoint.at_end and spec.failure.max_restarts == 0
    assert spec.model["d_model"] == 256 and spec.model["n_layer"] == 3
    assert build_deepspeed_config(spec)["zero_optimization"]["stage"] == stage


def test_bytes_per_param_and_bound():
    assert [bytes_per_param(s) for s in bench_largest.STAGES] == [16, 10, 9, 8]
    assert physical_bound(16 * 10**9, 0) == 10**9 and physical_bound(8 * 10**9, 3) == 10**9


def test_steady_step_time_leaves_out_step_one_and_the_final_row():
    rows = [{"step": 1, "step_time_s": 100.0, "loss": 5}, *({"step": i, "step_time_s": float(i)} for i in range(2, 11)),
            {"step": 10, "final": True, "step_time_s": 50.0}]
    assert bench_largest.steady_s_per_step(rows) == 6.0
    assert bench_largest.steady_s_per_step([]) is None


def test_table_shows_measured_and_failed_rows():
    budget = 2 * GiB
    est = estimate_for(3, 4, **TINY)
    text = bench_largest.table([
        Result(3, 4, est, budget, peak_rss=est.total // 2 * 2 - 2**20, s_per_step=1.5),
        Result(0, 2, estimate_for(0, 2, **TINY), budget, error="3 of 10 steps; killed"),
    ], d_model=256)
    lines = text.splitlines()
    assert "budget 2.00 GiB per worker" in lines[0]
    assert lines[4].startswith("| 3 | 4 |") and "| 1.50 |" in lines[4] and "| 268.4M | 8 |" in lines[4]
    assert "failed: 3 of 10 steps; killed" in lines[5] and lines[5].startswith("| 0 | 2 |")
