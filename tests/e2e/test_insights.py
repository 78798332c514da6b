"""Know before you launch, see while it runs: admission by memory, measured vs estimated model states,
grad norm and TensorBoard events from real runs, and `orch report` of a real job in headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from orchestrator.core.estimate import GiB, estimate
from orchestrator.core.spec import load_spec_file
from tests.chromium import assert_not_blank, chromium, render
from tests.e2e.conftest import REPO, Orch, metrics_rows

pytestmark = pytest.mark.e2e

GPT = "jobs/examples/gpt-zero3.yaml"
MLP = "jobs/examples/mlp-digits.yaml"
GPT_SHORT = ("train.steps=12", "train.report_every=4", "train.eval_every=0", "checkpoint.every_steps=6")
MLP_SHORT = ("train.steps=20", "train.eval_every=0", "checkpoint.every_steps=0")
# ~6.4M parameters in bf16: model states, not the fixed per-process runtime, decide whether it fits.
BIG = ("model.d_model=256", "model.n_layer=8", "deepspeed.precision=bf16", "deepspeed.micro_batch_size=1",
       "train.steps=2", "train.warmup_steps=0", "train.eval_batches=1", "checkpoint.every_steps=0",
       "checkpoint.at_end=false", "name=big")


@pytest.fixture(scope="module")
def home(ray_cluster, tmp_path_factory) -> Orch:
    h = tmp_path_factory.mktemp("insights") / "orch-home"
    return Orch(home=h, env={**ray_cluster, "ORCH_HOME": str(h)})


@pytest.fixture(scope="module")
def gpt_job(home) -> str:
    job_id, _ = home.submit(GPT, *GPT_SHORT)
    return job_id


def _ranks(home: Orch, job_id: str) -> list[dict]:
    root = home.storage / "jobs" / job_id / "workers"
    return [json.loads(p.read_text()) for p in sorted(root.glob("rank-*.json"))]


def _assert_measured_close_to_estimate(home: Orch, job_id: str, spec_path: str, sets: tuple[str, ...]) -> None:
    est = estimate(load_spec_file(REPO / spec_path, list(sets)))
    ranks = _ranks(home, job_id)
    assert len(ranks) == est.num_workers
    for rank in ranks:
        measured = rank["memory"]
        assert measured["model_states"] == pytest.approx(est.model_states, rel=0.2), (measured, est.as_dict())
        for name in ("params", "grads", "master", "optimizer_states"):
            assert measured[name] == pytest.approx(est.component(name), rel=0.2, abs=1024), name
        assert measured["peak_rss"] > measured["model_states"]


def test_gpt_example_zero3_measured_model_states_match_estimate(home, gpt_job):
    _assert_measured_close_to_estimate(home, gpt_job, GPT, GPT_SHORT)


def test_mlp_example_zero2_measured_model_states_match_estimate(home):
    job_id, _ = home.submit(MLP, *MLP_SHORT)
    _assert_measured_close_to_estimate(home, job_id, MLP, MLP_SHORT)
    rows = metrics_rows(home.storage / "jobs" / job_id)
    assert all(r["grad_norm"] > 0 for r in rows if "loss" in r and not r.get("final"))


def test_metrics_have_grad_norm_and_tensorboard_events(home, gpt_job):
    root = home.storage / "jobs" / gpt_job
    rows = [r for r in metrics_rows(root) if not r.get("final")]
    assert [r["step"] for r in rows] == [1, 4, 6, 8, 12]  # reports, and the checkpoint at 6
    for row in rows:
        assert row["grad_norm"] > 0 and row["tokens_per_s"] > 0 and row["step_time_s"] > 0 and "lr" in row
        assert "mfu" not in row  # CPU: no known peak
    events = EventAccumulator(str(root / "tensorboard"))
    events.Reload()
    for tag in ("loss", "lr", "grad_norm", "tokens_per_s", "step_time_s"):
        assert [e.step for e in events.Scalars(tag)] == [1, 4, 6, 8, 12], tag
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in rows])


def test_report_of_a_real_job_renders_in_chromium(home, gpt_job, tmp_path):
    chromium()
    proc = home.run("report", gpt_job, "--out", str(tmp_path / "out"))
    page = Path(proc.stdout.strip())
    dom = render(page, tmp_path / "shot.png")
    for name in ("loss.png", "throughput.png", "optimizer.png"):
        assert f'<img alt="{name}" src="data:image/png;base64,' in dom
    assert "<td>6</td>" in dom and "<td>12</td>" in dom  # the checkpoints table
    assert "rank 1" in dom and "estimate" in dom  # measured vs estimated memory
    assert_not_blank(tmp_path / "shot.png")
    assert (home.storage / "jobs" / gpt_job / "report.html").is_file()


def test_submit_refuses_what_cannot_fit_and_accepts_zero3(home):
    zero0 = load_spec_file(REPO / GPT, [*BIG, "deepspeed.zero_stage=0"])
    zero3 = load_spec_file(REPO / GPT, [*BIG, "deepspeed.zero_stage=3"])
    need0, need3 = estimate(zero0).total, estimate(zero3).total
    budget_gb = (need0 + need3) / 2 / GiB
    budget = {"ORCH_WORKER_MEMORY_GB": f"{budget_gb:.4f}"}
    before = set((home.storage / "jobs").iterdir()) if (home.storage / "jobs").exists() else set()
    jobs_before = json.loads(home.run("list", "--json").stdout)

    proc = home.run("submit", str(REPO / GPT), *[a for s in (*BIG, "deepspeed.zero_stage=0") for a in ("--set", s)],
                    check=False, extra_env=budget)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr
    assert f"{estimate(zero0).params:,} parameters" in message
    assert "ZeRO-0" in message and "ORCH_WORKER_MEMORY_GB" in message and "deepspeed.zero_stage=3" in message
    assert f"{need0 / 2**20:.1f} MiB per worker" in message and "Traceback" not in message
    assert json.loads(home.run("list", "--json").stdout) == jobs_before  # no job record
    after = set((home.storage / "jobs").iterdir()) if (home.storage / "jobs").exists() else set()
    assert after == before  # no storage object

    job_id, proc = home.submit(GPT, *BIG, "deepspeed.zero_stage=3", extra_env=budget)
    assert home.status(job_id)["state"] == "SUCCEEDED", proc.stderr
    # bf16 ZeRO-3 over 2 workers: 20/N bytes per parameter, measured.
    _assert_measured_close_to_estimate(home, job_id, GPT, (*BIG, "deepspeed.zero_stage=3"))
