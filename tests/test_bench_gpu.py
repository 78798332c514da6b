"""The GPU benchmark's plan, checked without a GPU: every run it would submit is a valid spec of the intended size,
the MFU peak of the GPUs it targets is known, and a run out of time or failed becomes a row that says so."""

from __future__ import annotations

import pytest

from bench import bench_gpu
from bench.bench_gpu import CASES, STAGES, Case, Result, job_sets
from orchestrator.control.local_cluster import _free_ports
from orchestrator.core.deepspeed_config import build_deepspeed_config
from orchestrator.core.estimate import estimate, peak_flops
from orchestrator.core.spec import load_spec_file


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
@pytest.mark.parametrize("stage", STAGES)
def test_each_run_is_a_valid_one_gpu_bf16_spec_without_checkpoints(case, stage):
    spec = load_spec_file(bench_gpu.REPO / case.spec, job_sets(case, stage))
    assert spec.scaling.use_gpu and spec.scaling.num_workers == 1 and spec.deepspeed.precision == "bf16"
    assert spec.checkpoint.every_steps == 0 and not spec.checkpoint.at_end and spec.failure.max_restarts == 0
    ds = build_deepspeed_config(spec)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_batch_size"] == case.micro_batch and ds["gradient_accumulation_steps"] == 1
    # Enough report windows after the first for a median that leaves start-up out.
    assert case.steps // case.report_every >= 4


def test_1b_case_is_a_billion_parameters_and_fits_an_h200():
    case = next(c for c in CASES if c.label == "1.0B")
    assert 1.0e9 <= bench_gpu.param_count(case) <= 1.2e9
    for stage in STAGES:
        est = estimate(load_spec_file(bench_gpu.REPO / case.spec, job_sets(case, stage)))
        assert est.on("device") < 100 * 2**30  # of the H200's 141 GB, with room for what the estimate leaves out


def test_1b_example_spec_is_zero3_bf16_on_one_gpu():
    spec = load_spec_file(bench_gpu.REPO / "jobs/examples/gpt-1b-gpu.yaml")
    assert spec.deepspeed.zero_stage == 3 and spec.deepspeed.precision == "bf16" and spec.scaling.use_gpu


@pytest.mark.parametrize("name", ["NVIDIA H200", "NVIDIA H100 80GB HBM3"])
def test_mfu_knows_the_hopper_peak(name, monkeypatch):
    monkeypatch.delenv("ORCH_PEAK_FLOPS", raising=False)
    assert peak_flops(name) == 989e12


def test_a_run_that_cannot_start_in_time_is_skipped_without_submitting():
    class NoCluster:
        def orch(self, *args, **kwargs):
            raise AssertionError(f"nothing may be submitted: {args}")

    results = bench_gpu.run_cases(NoCluster(), CASES, budget_s=0)  # type: ignore[arg-type]
    assert [r.error for r in results] == ["skipped: out of time"] * len(CASES) * len(STAGES)
    assert "skipped: out of time" in bench_gpu.table(results)


def test_table_rows_show_figures_or_the_reason():
    case = Case("tiny", "jobs/examples/gpt-1b-gpu.yaml", micro_batch=2, steps=10, report_every=2, timeout_s=60,
                extra=("model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=16"))
    ok = Result(case, 1, bench_gpu.param_count(case), 12.0, tokens_per_s=1234.5, step_time_s=0.25, mfu=0.2)
    failed = Result(case, 3, ok.params, 60.0, error="timed out after 60 s", log_tail="worker log")
    text = bench_gpu.report([ok, failed], "NVIDIA H200")
    assert "| tiny | 0M | 1 | 2 x 16 | 1,234 | 0.250 | 20.0% | **0.50** |" in text
    assert "| tiny | 0M | 3 | 2 x 16 | timed out after 60 s |" in text
    assert "worker log" in text  # why it failed is in the section


def test_local_cluster_ports_are_distinct():
    ports = _free_ports(4)
    assert len(set(ports)) == 4
