"""Metrics written at each report: TensorBoard events next to metrics.jsonl, gradient norm and MFU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from orchestrator.core.metrics_log import MetricsLog, read_jsonl
from orchestrator.core.spec import load_spec_file
from orchestrator.runtime.step_metrics import health_metrics
from orchestrator.storage import open_store
from tests.paths import REPO_ROOT

REPO = REPO_ROOT


def _scalars(root: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(root / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_rank0_writes_tensorboard_events_into_storage_at_each_report(tmp_path):
    store = open_store(tmp_path.as_uri())
    log = MetricsLog(store, enabled=True)
    log.add({"step": 1, "loss": 5.0, "lr": 1e-3, "time": "t", "tokens_per_s": 100.0}, flush=True)
    assert _scalars(tmp_path, "loss") == [(1, 5.0)]  # uploaded at the first report already
    log.add({"step": 2, "loss": 4.0, "grad_norm": float("nan")}, flush=False)
    log.add({"step": 3, "loss": 3.0, "final": True}, flush=True)
    assert _scalars(tmp_path, "loss") == [(1, 5.0), (2, 4.0), (3, 3.0)]
    assert [s for s, _ in _scalars(tmp_path, "tokens_per_s")] == [1]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert "time" not in acc.Tags()["scalars"] and "grad_norm" not in acc.Tags()["scalars"]  # text, NaN


def test_resumed_attempt_purges_the_lost_steps_in_tensorboard(tmp_path):
    store = open_store(tmp_path.as_uri())
    first = MetricsLog(store, enabled=True)
    for step in (1, 2, 3, 4):
        first.add({"step": step, "loss": 10.0 - step}, flush=True)
    resumed = MetricsLog(store, enabled=True)
    resumed.resume_from(2)  # checkpoint at 2; steps 3-4 are trained again
    resumed.add({"step": 3, "loss": 6.5}, flush=True)
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2  # one event file per attempt
    assert _scalars(tmp_path, "loss") == [(1, 9.0), (2, 8.0), (3, 6.5)]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_other_ranks_write_nothing(tmp_path):
    log = MetricsLog(open_store(tmp_path.as_uri()), enabled=False)
    log.add({"step": 1, "loss": 1.0}, flush=True)
    assert not any(tmp_path.iterdir())


class _Engine:
    def __init__(self, norm):
        self.norm = norm

    def get_global_grad_norm(self):
        return self.norm


def test_grad_norm_and_mfu(monkeypatch):
    spec = load_spec_file(REPO / "jobs/examples/gpt-zero3.yaml")
    monkeypatch.delenv("ORCH_PEAK_FLOPS", raising=False)
    assert health_metrics(_Engine(torch.tensor(1.5)), spec, {"tokens_per_s": 1000.0}, 2) == {"grad_norm": 1.5}
    assert health_metrics(_Engine(None), spec, {"tokens_per_s": 1000.0}, 2) == {}  # ZeRO-0 fp32 computes none
    monkeypatch.setenv("ORCH_PEAK_FLOPS", "1e9")
    extra = health_metrics(_Engine(2.0), spec, {"tokens_per_s": 1000.0}, 2)
    # 120,576-parameter GPT: 797,184 training FLOPs per token (6N + attention), 2 workers at 1 GFLOP/s peak.
    assert extra["mfu"] == pytest.approx(1000.0 * 797_184 / 2e9)


def test_a_damaged_metrics_line_is_skipped_not_fatal(tmp_path):
    store = open_store(tmp_path.as_uri())
    store.put_bytes("metrics.jsonl", b'{"step": 1, "loss": 4.0}\n[1, 2]\n{"step": 2, "loss": 3.5}\n{"step": 3, "lo')
    assert read_jsonl(store) == [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 3.5}]
    assert read_jsonl(store, "missing.jsonl") == []


def test_a_report_does_not_wait_for_a_stalled_store_and_the_final_write_has_every_row(tmp_path):
    import threading

    store = open_store(tmp_path.as_uri())
    release = threading.Event()
    real_put = store.put_bytes

    def stalled_put(key: str, data: bytes) -> None:  # storage down: each write retries for a long time
        release.wait(timeout=60)
        real_put(key, data)

    store.put_bytes = stalled_put  # type: ignore[method-assign]
    log = MetricsLog(store, enabled=True, tensorboard=False)
    log.add({"step": 1, "loss": 2.0}, flush=True, background=True)
    log.add({"step": 2, "loss": 1.0}, flush=True, background=True)  # returns at once: training goes on
    assert not (tmp_path / "metrics.jsonl").exists()
    release.set()
    log.add({"step": 2, "final": True, "loss": 1.0}, flush=True)  # waits for the write in flight, then writes
    rows = read_jsonl(store)
    assert [(r["step"], bool(r.get("final"))) for r in rows] == [(1, False), (2, False), (2, True)]


def test_evaluation_time_is_left_out_of_the_training_throughput(monkeypatch):
    from orchestrator.runtime import step_metrics

    now = [100.0]
    monkeypatch.setattr(step_metrics.time, "perf_counter", lambda: now[0])
    window = step_metrics.ThroughputWindow()
    for _ in range(4):  # 4 steps of 512 tokens, 2 s each
        now[0] += 2.0
        window.add({"tokens": 512})
    now[0] += 6.0  # an evaluation inside the window
    window.leave_out(6.0)
    rates = window.rates(world_size=2)
    assert rates == {"step_time_s": 2.0, "tokens_per_s": 4 * 512 * 2 / 8.0}
    window.reset()
    assert window.left_out == 0.0
