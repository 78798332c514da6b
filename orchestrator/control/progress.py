"""Live terminal progress for `--wait` and `logs --follow`: state, step, loss, throughput, redrawn in place."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from orchestrator.control.index import JobRecord


def progress_line(rec: JobRecord) -> Text:
    m = rec.metrics
    total = rec.spec.get("train", {}).get("steps")
    parts = [f"{rec.id}  {rec.state.value}"]
    if "step" in m:
        step = int(m["step"])
        bar = ""
        if total:
            filled = int(20 * min(step, total) / total)
            bar = " [" + "#" * filled + "." * (20 - filled) + "]"
        parts.append(f"step {step}/{total}{bar}")
    for key, label in (("loss", "loss"), ("eval_loss", "eval"), ("eval_accuracy", "acc"),
                       ("tokens_per_s", "tok/s"), ("samples_per_s", "samples/s")):
        if key in m:
            parts.append(f"{label} {m[key]:.4g}")
    if rec.attempts > 1:
        parts.append(f"attempt {rec.attempts}")
    return Text("  ".join(parts))


def follow_job(manager: Any, job_id: str, console: Console,
               line: Callable[[JobRecord], Text] = progress_line) -> JobRecord:
    """Poll until the job (or campaign, with its own `line`) ends: a live line on a terminal, a new line per
    change otherwise (logs, CI)."""
    if console.is_terminal:
        with Live(console=console, refresh_per_second=4) as live:
            rec = manager.wait(job_id, on_update=lambda r: live.update(line(r)))
    else:
        last: list[str] = [""]

        def show(r: JobRecord) -> None:
            text = line(r).plain
            if text != last[0]:
                console.print(text)
                last[0] = text

        rec = manager.wait(job_id, on_update=show)
    style = "green" if rec.state.value == "SUCCEEDED" else "red"
    console.print(f"[{style}]{rec.state.value}[/]" + (f": {escape(rec.message)}" if rec.message else ""))
    return rec


def stream_logs_with_status(manager: Any, job_id: str, chunks: Iterator[str], console: Console) -> None:
    """`orch logs --follow`: the log streams by; on a terminal a live status line stays under it.

    The line is read from the job database (the background scheduler keeps it current), never by ticking
    from a second thread. Piped output gets the plain log, nothing else.
    """
    if not (console.is_terminal and sys.stdout.isatty()):
        for chunk in chunks:
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return
    stop = threading.Event()
    with Live(progress_line(manager.db.get(job_id)), console=console, refresh_per_second=2,
              redirect_stdout=True, transient=True) as live:

        def refresh() -> None:
            while not stop.wait(1.0):
                live.update(progress_line(manager.db.get(job_id)))

        poller = threading.Thread(target=refresh, daemon=True)
        poller.start()
        try:
            for chunk in chunks:
                sys.stdout.write(chunk)
                sys.stdout.flush()
        finally:
            stop.set()
            poller.join()
