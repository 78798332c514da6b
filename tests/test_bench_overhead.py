"""The overhead benchmark compares like with like: the plain DeepSpeed script builds the spec the orch run submits
(same model, batch, stage, workers), its processes get a launcher's environment, and the figure is ~85M."""

from __future__ import annotations

from bench import bench_overhead
from bench.bench_overhead import FULL, QUICK, plain_argv
from bench.plain_loops import REPO, SPEC, job_sets, parse, process_env
from orchestrator.core.deepspeed_config import build_deepspeed_config
from orchestrator.core.spec import load_spec_file


def test_full_figure_is_the_85m_gpt_with_steady_windows():
    assert 84e6 <= bench_overhead.params(FULL) <= 86e6
    assert FULL.steps // FULL.window >= 5 and FULL.repeats >= 3
    assert QUICK.steps // QUICK.window >= 3


def test_plain_and_orch_runs_share_one_spec():
    for workers in (1, 2):
        args = parse(plain_argv("deepspeed", workers, FULL))
        spec = load_spec_file(REPO / SPEC, job_sets(args))
        assert spec.model["d_model"] == 768 and spec.model["n_layer"] == 12 and spec.model["n_head"] == 12
        assert spec.scaling.num_workers == workers and spec.scaling.cpus_per_worker == 1
        assert spec.deepspeed.micro_batch_size == FULL.micro and spec.train.report_every == FULL.window
        ds = build_deepspeed_config(spec, workers)
        assert ds["zero_optimization"]["stage"] == bench_overhead.STAGE
        assert ds["train_batch_size"] == FULL.micro * workers


def test_each_plain_process_gets_a_launcher_environment_with_one_thread():
    env = process_env(1, 2, 12345)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("1", "1", "2", "12345")
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["OMP_NUM_THREADS"] == "1"
    assert str(REPO) in env["PYTHONPATH"].split(":")


def test_table_compares_each_orch_run_with_as_many_plain_processes():
    tps = {"torch-1": 1100.0, "deepspeed-1": 1000.0, "deepspeed-2": 1800.0, "orch-1": 960.0, "orch-2": 1710.0}
    text = bench_overhead.table(tps, {k: [v, v * 1.02] for k, v in tps.items()}, FULL)
    assert "| orch (Ray Train + DeepSpeed), 1 worker | 960 | **0.960** |" in text
    assert "| orch (Ray Train + DeepSpeed), 2 workers | 1,710 | **0.950** |" in text
    assert "85.4M parameters" in text and "spread between a setup's runs: 2.0%" in text
