"""`orch logs` filtering on log text shaped like Ray's (no cluster needed)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from orchestrator.control.logview import (
    LogFilter,
    Since,
    error_report,
    parse_line,
    parse_since,
    split_lines,
    strip_ansi,
)
from orchestrator.core.errors import OrchError

WARN = ("/site-packages/torch/distributed/c10d_logger.py:83: FutureWarning: `torch.distributed.all_gather_into_tensor` "
        "is deprecated. Please use `torch.distributed.all_gather_single` instead.")
LOG = f"""\
2026-12-04 18:27:00,777	INFO worker.py:1691 -- Using address 127.0.0.1:42353
\x1b[36m(TrainController pid=7612)\x1b[0m Attempting to start training worker group of size 2
\x1b[36m(RayTrainWorker pid=7875)\x1b[0m Setting up process group for: env:// [rank=0, world_size=2]
(TrainController pid=7612) Started training worker group of size 2:
(TrainController pid=7612) - (ip=127.0.0.1, pid=7875) world_rank=0, local_rank=0, node_rank=0
(TrainController pid=7612) - (ip=127.0.0.1, pid=7901) world_rank=1, local_rank=1, node_rank=0
(RayTrainWorker pid=7875) {WARN}
(RayTrainWorker pid=7875)   return func(*args, **kwargs)
(RayTrainWorker pid=7901) {WARN}\x1b[32m [repeated 41x across cluster]\x1b[0m
(RayTrainWorker pid=7901)   return func(*args, **kwargs)
(RayTrainWorker pid=7875) orch: step 10/20 loss 4.34 (2026-12-04T18:27:20+00:00)
(RayTrainWorker pid=7901) rank one after step 10
(RayTrainWorker pid=7875) orch: step 20/20 loss 3.47 (2026-12-04T18:27:40+00:00)
(RayTrainWorker pid=7875) rank zero after step 20
orch: job x SUCCEEDED
"""


def test_ansi_and_ray_prefix() -> None:
    line = parse_line("\x1b[36m(RayTrainWorker pid=42, ip=10.0.0.2)\x1b[0m hello \x1b[1mworld\x1b[22m")
    assert (line.pid, line.text) == (42, "hello world")
    assert "\x1b" not in line.raw
    assert parse_line("plain driver line").pid is None
    assert strip_ansi("\x1b]8;;http://x\x07link") == "link"


def test_every_output_line_is_free_of_escape_codes_and_tagged_with_its_rank() -> None:
    shown = list(LogFilter().run(LOG.splitlines()))
    assert not any("\x1b" in s for s in shown)
    assert "[rank 1] (RayTrainWorker pid=7901) rank one after step 10" in shown
    assert "orch: job x SUCCEEDED" in shown  # driver lines stay, untagged


def test_rank_filter_uses_the_worker_group_map_even_for_earlier_lines() -> None:
    view = LogFilter(rank=0)
    for raw in LOG.splitlines():
        view.learn(raw)
    shown = list(view.run(LOG.splitlines()))
    assert shown[0].endswith("Setting up process group for: env:// [rank=0, world_size=2]")  # before the map line
    assert all(s.startswith("[rank 0] (RayTrainWorker pid=7875)") for s in shown)
    assert not any("7901" in s for s in shown)


def test_a_repeated_warning_shows_once_for_the_job() -> None:
    view = LogFilter()
    shown = list(view.run(LOG.splitlines()))
    assert sum("FutureWarning" in s for s in shown) == 1
    assert sum("return func" in s for s in shown) == 1  # its source line went with it
    assert view.hidden_warnings == 1


def test_a_ray_actors_repeated_line_shows_once_but_a_workers_lines_all_show() -> None:
    spam = "(PlacementGroupCleaner pid=99) Found multiple active Ray instances: {'a', 'b'}."
    same = "(RayTrainWorker pid=7875) epoch done"
    view = LogFilter(ranks={7875: 0})
    shown = list(view.run([spam, spam, spam, same, same]))
    assert shown == [spam, f"[rank 0] {same}", f"[rank 0] {same}"]
    assert view.hidden_warnings == 2


def test_since_step_and_since_time() -> None:
    by_step = list(LogFilter(since=Since(step=20)).run(LOG.splitlines()))
    assert by_step[0].endswith("orch: step 20/20 loss 3.47 (2026-12-04T18:27:40+00:00)")
    assert not any("rank one after step 10" in s for s in by_step)
    by_time = list(LogFilter(since=parse_since("2026-12-04T18:27:10")).run(LOG.splitlines()))
    assert by_time[0].endswith("orch: step 10/20 loss 4.34 (2026-12-04T18:27:20+00:00)")
    assert list(LogFilter(since=Since(step=21)).run(LOG.splitlines())) == []


def test_a_step_line_ray_logged_twice_shows_once_and_since_never_goes_back() -> None:
    # Seen in Ray's job log: each of a worker's lines twice, the copies interleaved with later lines.
    step = "(RayTrainWorker pid=7875) orch: step {n}/20 loss 2.2 (2026-12-04T18:27:{n:02d}+00:00)"
    doubled = [*LOG.splitlines()[:6], *(step.format(n=n) for n in (2, 4, 2, 4, 6, 6))]
    shown = list(LogFilter().run(doubled))
    assert [line.split("orch: step ")[1][:4] for line in shown if "orch: step" in line] == ["2/20", "4/20", "6/20"]
    since = list(LogFilter(since=Since(step=4)).run(doubled))
    assert [line.split("orch: step ")[1][:4] for line in since] == ["4/20", "6/20"]


def test_parse_since() -> None:
    now = datetime(2026, 1, 2, 10, 0, tzinfo=timezone.utc)
    assert parse_since("120") == Since(step=120)
    assert parse_since("10m", now) == Since(time=datetime(2026, 1, 2, 9, 50, tzinfo=timezone.utc))
    assert parse_since("2026-01-02T08:00:00Z").time == datetime(2026, 1, 2, 8, tzinfo=timezone.utc)
    with pytest.raises(OrchError, match="--since"):
        parse_since("yesterday-ish")


def test_split_lines_joins_chunks() -> None:
    assert list(split_lines(["a\nb", "c\n", "d"])) == ["a", "bc", "d"]


FAILED_LOG = """\
(TrainController pid=1) - (ip=127.0.0.1, pid=11) world_rank=0, local_rank=0, node_rank=0
(TrainController pid=1) - (ip=127.0.0.1, pid=12) world_rank=1, local_rank=1, node_rank=0
(RayTrainWorker pid=11) orch: step 10/20 loss 4.34 (2026-12-04T18:27:20+00:00)
(RayTrainWorker pid=12) Traceback (most recent call last):
(RayTrainWorker pid=11) still fine
(RayTrainWorker pid=12)   File "train.py", line 3, in main
(RayTrainWorker pid=12)     load()
(RayTrainWorker pid=12) KeyError: 'x'
(RayTrainWorker pid=12)
(RayTrainWorker pid=12) The above exception was the direct cause of the following exception:
(RayTrainWorker pid=12)
(RayTrainWorker pid=12) Traceback (most recent call last):
(RayTrainWorker pid=12)   File "train.py", line 9, in main
(RayTrainWorker pid=12)     raise RuntimeError("boom at step 12") from exc
(RayTrainWorker pid=12) RuntimeError: boom at step 12
(RayTrainWorker pid=12) after the failure
(TrainController pid=1) ERROR worker group failed
Traceback (most recent call last):
  File "driver.py", line 5, in main
    trainer.fit()
ray.train.TrainingFailedError: Training failed due to worker errors
orch: job FAILED: RuntimeError: boom at step 12
"""


def test_errors_puts_the_reason_and_the_raising_workers_traceback_first() -> None:
    lines = FAILED_LOG.splitlines()
    view = LogFilter()
    for raw in lines:
        view.learn(raw)
    report = error_report(lines, "RuntimeError: boom at step 12", view.ranks)
    assert report[0] == "failure reason: RuntimeError: boom at step 12"
    assert report[1] == "--- traceback (rank 1) ---"
    worker_tb = report[2:report.index("--- traceback (driver) ---")]
    assert worker_tb[0] == "Traceback (most recent call last):" and worker_tb[-1] == "RuntimeError: boom at step 12"
    assert "KeyError: 'x'" in worker_tb and "still fine" not in worker_tb and "after the failure" not in worker_tb
    driver_tb = report[report.index("--- traceback (driver) ---") + 1:report.index("--- other error lines ---")]
    assert driver_tb[-1].startswith("ray.train.TrainingFailedError")
    assert "(TrainController pid=1) ERROR worker group failed".split(") ", 1)[1] in report


def test_errors_find_the_workers_traceback_behind_a_wrapped_reason() -> None:
    lines = FAILED_LOG.splitlines()
    ranks = {11: 0, 12: 1}
    report = error_report(lines, "WorkerGroupError: RuntimeError: boom at step 12", ranks)
    assert report[1:3] == ["--- traceback (rank 1) ---", "Traceback (most recent call last):"]


def test_errors_without_any_error() -> None:
    assert error_report(["all good"], "", {}) == ["no tracebacks or error lines in the log"]
