"""Reading a job's Ray logs as people need them: one rank, since a step or time, errors first, no escape codes.

Ray prefixes every line a worker prints with `(RayTrainWorker pid=P[, ip=I])`. Which rank a pid is comes
from Ray Train's own "Started training worker group" lines (`- (ip=I, pid=P) world_rank=R, ...`), printed
for every (re)start of the worker group, so the map stays right across restarts; the worker's record in
storage (`workers/rank-N.json`, with its pid) fills in for lines Ray printed before that. The pid is the
key because the job's driver sees every worker's output, so that prefix is always there, even for lines
printed by C++ or before our code ran. Steps come from the `orch: step N ... (TIME)` line rank 0 prints at
each report (see WorkerContext.after_step), which also dates the log for `--since TIME`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from orchestrator.control.idle import parse_duration
from orchestrator.core.errors import OrchError

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
RAY_PREFIX = re.compile(r"^\((?P<actor>[^()\s]+) pid=(?P<pid>\d+)(?:, ip=(?P<ip>[^)]+))?\)\s?(?P<text>.*)$")
WORKER_GROUP = re.compile(r"\(ip=[^,]+, pid=(?P<pid>\d+)\) world_rank=(?P<rank>\d+)")
STEP_MARK = re.compile(r"^orch: step (?P<step>\d+)\S* .*\((?P<time>[^()]+)\)\s*$")
PY_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")
RAY_REPEATED = re.compile(r"\s*\[repeated \d+x across cluster\].*$")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


@dataclass(frozen=True)
class LogLine:
    raw: str  # as Ray stored it (escape codes removed)
    pid: int | None  # the Ray process that printed it; None for the driver's own lines
    text: str  # without Ray's prefix


def parse_line(raw: str) -> LogLine:
    raw = strip_ansi(raw.rstrip("\n"))
    match = RAY_PREFIX.match(raw)
    if not match:
        return LogLine(raw, None, raw)
    return LogLine(raw, int(match.group("pid")), match.group("text"))


@dataclass(frozen=True)
class Since:
    step: int | None = None
    time: datetime | None = None


def parse_since(text: str, now: datetime | None = None) -> Since:
    """'120' -> step 120; '2026-01-02T10:00:00' (UTC unless it says) or '10m' (ago) -> a time."""
    text = text.strip()
    if text.isdigit():
        return Since(step=int(text))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return Since(time=moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))
    except ValueError:
        pass
    try:
        ago = parse_duration(text, "--since")
    except OrchError:
        raise OrchError(f"--since: '{text}' is neither a step (120), a time (2026-01-02T10:00:00, UTC) nor a "
                        "duration ago (90s, 10m, 2h).") from None
    return Since(time=(now or datetime.now(timezone.utc)) - timedelta(seconds=ago))


def _mark_reached(text: str, since: Since) -> bool:
    match = STEP_MARK.match(text)
    if not match:
        return False
    if since.step is not None:
        return int(match.group("step")) >= since.step
    try:
        moment = datetime.fromisoformat(match.group("time").replace("Z", "+00:00"))
    except ValueError:
        return False
    return since.time is not None and moment >= since.time


@dataclass
class LogFilter:
    """Turns Ray's log lines into the lines to show, one line at a time (works for --follow as well)."""

    rank: int | None = None
    since: Since | None = None
    ranks: dict[int, int] = field(default_factory=dict)  # pid -> world rank
    hidden_warnings: int = 0  # repeats left out: warnings shown once per job, Ray actors' repeated lines
    _warnings_seen: set[str] = field(default_factory=set)
    _actor_lines_seen: set[str] = field(default_factory=set)
    _marks_seen: set[str] = field(default_factory=set)
    _skip_context_of: int | None = -1  # pid whose next indented line is a hidden warning's source line
    _started: bool = False

    def learn(self, raw: str) -> None:
        """Note pid -> rank from Ray Train's worker-group lines."""
        for match in WORKER_GROUP.finditer(strip_ansi(raw)):
            self.ranks[int(match.group("pid"))] = int(match.group("rank"))

    def feed(self, raw: str) -> str | None:
        """The line to show (with `[rank N] ` in front of a worker's line), or None to hide it."""
        self.learn(raw)
        line = parse_line(raw)
        if STEP_MARK.match(line.text):
            # Ray's log can carry a worker's line twice, the copies interleaved with later ones; a dated step
            # line is unique by construction (step and time), so a second copy is that, never a new report.
            key = f"{line.pid} {line.text}"
            if key in self._marks_seen:
                return None
            self._marks_seen.add(key)
        if self.since is not None and not self._started:
            self._started = _mark_reached(line.text, self.since)
            if not self._started:
                return None
        if self._is_repeated_warning(line):
            return None
        rank = self.ranks.get(line.pid) if line.pid is not None else None
        if self.rank is not None and rank != self.rank:
            return None
        if line.pid is not None and rank is None:
            # Ray's own actors (controller, placement-group cleaner...) can repeat one line hundreds of times,
            # e.g. while other Ray instances run on the machine; a worker's lines are the job's, all kept.
            key = f"{line.pid} {RAY_REPEATED.sub('', line.text)}"
            if key in self._actor_lines_seen:
                self.hidden_warnings += 1
                return None
            self._actor_lines_seen.add(key)
        return f"[rank {rank}] {line.raw}" if rank is not None else line.raw

    def _is_repeated_warning(self, line: LogLine) -> bool:
        """A Python warning (and its source line) shown once for the whole job, not once per rank and call."""
        if self._skip_context_of != -1:
            skip = line.pid == self._skip_context_of and line.text.startswith("  ")
            self._skip_context_of = -1
            if skip:
                return True
        if not PY_WARNING.match(line.text):
            return False
        key = RAY_REPEATED.sub("", line.text)
        if key in self._warnings_seen:
            self.hidden_warnings += 1
            self._skip_context_of = line.pid
            return True
        self._warnings_seen.add(key)
        return False

    def run(self, lines: Iterable[str]) -> Iterator[str]:
        for raw in lines:
            shown = self.feed(raw)
            if shown is not None:
                yield shown


def split_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Ray's log stream arrives in arbitrary chunks; yield whole lines."""
    pending = ""
    for chunk in chunks:
        pending += chunk
        *whole, pending = pending.split("\n")
        yield from whole
    if pending:
        yield pending


# ---- --errors ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Traceback:
    pid: int | None
    lines: list[str]

    @property
    def exception(self) -> str:
        return self.lines[-1] if self.lines else ""


def tracebacks(lines: Iterable[str]) -> list[Traceback]:
    """Python tracebacks in the log, chained causes kept together, per process (processes' lines interleave)."""
    found: list[Traceback] = []
    blocks: dict[int | None, tuple[list[str], bool]] = {}  # pid -> (lines so far, exception line seen)

    def close(pid: int | None) -> None:
        block, _ = blocks.pop(pid)
        while block and not block[-1].strip():
            block.pop()
        found.append(Traceback(pid, block))

    for raw in lines:
        line = parse_line(raw)
        text, pid = line.text, line.pid
        chained = text == "" or text.startswith(CHAIN)
        if pid in blocks:
            block, ended = blocks[pid]
            if ended and not chained:
                close(pid)  # this line starts whatever comes after the traceback
            else:
                block.append(text)
                # A traceback ends at its exception line: the first line that is neither indented nor blank.
                if text.startswith("Traceback"):
                    ended = False
                elif not chained:
                    ended = not text.startswith((" ", "\t"))
                blocks[pid] = (block, ended)
                continue
        if text.startswith("Traceback (most recent call last):"):
            blocks[pid] = ([text], False)
    for pid in list(blocks):
        close(pid)
    return found


CHAIN = ("The above exception", "During handling", "Traceback (most recent call last):")


def error_report(raw_lines: list[str], reason: str, ranks: dict[int, int]) -> list[str]:
    """The failure reason, then the traceback that raised it (a worker's if it has one), then other tracebacks
    and error lines, each once."""
    found = tracebacks(raw_lines)
    # The reason is the innermost error as the driver saw it, possibly wrapped ("WorkerGroupError: RuntimeError:
    # boom"); the traceback that raised it ends in that error's own line, and a worker's is the one to show first.
    tail = reason.split(": ", 1)[-1].strip() if reason else ""

    def score(tb: Traceback) -> tuple[int, int]:
        exc = tb.exception.strip()
        matches = bool(reason and exc) and (exc in reason or (bool(tail) and tail in exc))
        return int(matches), int(tb.pid in ranks)

    ordered = sorted(found, key=score, reverse=True)
    out: list[str] = []
    if reason:
        out.append(f"failure reason: {reason}")
    seen: set[str] = set()
    for tb in ordered:
        key = "\n".join(tb.lines)
        if key in seen:
            continue
        seen.add(key)
        who = f"rank {ranks[tb.pid]}" if tb.pid in ranks else ("driver" if tb.pid is None else f"pid {tb.pid}")
        out.append(f"--- traceback ({who}) ---")
        out.extend(tb.lines)
    in_tracebacks = {line for tb in found for line in tb.lines}
    extra: list[str] = []
    for raw in raw_lines:
        line = parse_line(raw)
        if line.text in in_tracebacks or line.text in extra:
            continue
        if re.search(r"\b(ERROR|Error|Exception|FAILED|Traceback)\b", line.text) and not PY_WARNING.match(line.text):
            extra.append(line.text)
    if extra:
        out.append("--- other error lines ---")
        out.extend(extra)
    if len(out) == (1 if reason else 0):
        out.append("no tracebacks or error lines in the log")
    return out
