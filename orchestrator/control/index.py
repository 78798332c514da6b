"""The metadata index: one SQLite file under ORCH_HOME.

It is an index, not the source of truth: specs, metrics, results and checkpoints live in storage, and
`orch sync` can rebuild this file from there. Many `orch` processes may use it at once, so it runs
in WAL mode with a generous busy timeout, and state changes are compare-and-set updates: two
processes can never both move a job from QUEUED to STARTING (and so never launch it twice).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.core.errors import NotFoundError, OrchError
from orchestrator.core.run import utc_now
from orchestrator.core.states import JobState, check_transition

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL DEFAULT 'job',
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    storage_uri TEXT NOT NULL,
    ray_address TEXT,
    spec_json TEXT NOT NULL,
    cpus REAL NOT NULL DEFAULT 0,
    gpus REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    submissions INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    metrics_json TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


@dataclass
class JobRecord:
    id: str
    name: str
    state: JobState
    storage_uri: str
    spec: dict[str, Any]
    kind: str = "job"
    ray_address: str | None = None
    cpus: float = 0.0
    gpus: float = 0.0
    attempts: int = 0
    submissions: int = 0
    cancel_requested: bool = False
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)
    started_at: str | None = None
    finished_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "name": self.name, "state": self.state.value,
            "attempts": self.attempts, "storage_uri": self.storage_uri, "ray_address": self.ray_address,
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "message": self.message, "cpus": self.cpus, "gpus": self.gpus, "metrics": self.metrics,
        }


_COLUMNS = ("id", "kind", "name", "state", "storage_uri", "ray_address", "spec_json", "cpus", "gpus",
            "attempts", "submissions", "cancel_requested", "message", "metrics_json",
            "created_at", "started_at", "finished_at")


def _row_to_record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"], kind=row["kind"], name=row["name"], state=JobState(row["state"]),
        storage_uri=row["storage_uri"], ray_address=row["ray_address"], spec=json.loads(row["spec_json"]),
        cpus=row["cpus"], gpus=row["gpus"], attempts=row["attempts"], submissions=row["submissions"],
        cancel_requested=bool(row["cancel_requested"]), message=row["message"],
        metrics=json.loads(row["metrics_json"]), created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def _record_to_row(rec: JobRecord) -> tuple[Any, ...]:
    return (rec.id, rec.kind, rec.name, rec.state.value, rec.storage_uri, rec.ray_address,
            json.dumps(rec.spec, sort_keys=True), rec.cpus, rec.gpus, rec.attempts, rec.submissions,
            int(rec.cancel_requested), rec.message, json.dumps(rec.metrics, sort_keys=True),
            rec.created_at, rec.started_at, rec.finished_at)


class JobIndex:
    """CRUD and compare-and-set state changes over the jobs table."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Records hold specs and messages: readable by their owner only (sqlite gives -wal/-shm the same mode).
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise OrchError(f"Cannot use {self.path.parent} as ORCH_HOME ({exc.strerror}): it must be a directory "
                            "this user can write. Point ORCH_HOME at one (default ~/.orch).") from None
        try:
            self._retrying(self._create)
        except sqlite3.DatabaseError as exc:
            raise OrchError(f"The job database {self.path} cannot be read ({exc}); it is damaged or not a job "
                            "database. Move it aside and rebuild the index from storage with: orch sync") from None

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        # WAL is stored in the file, so only the first opener switches; the check keeps later ones lock-free.
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise OrchError(f"Cannot open the job database {self.path}: {exc}. Check ORCH_HOME is writable.") from None
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    def _retrying(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on a fresh connection, retrying with backoff while the file is locked.

        The busy timeout covers ordinary writes, but SQLite answers "database is locked" without waiting in a few
        cases (switching the journal mode, opening while the last WAL user checkpoints): twenty `orch submit`s on a
        fresh ORCH_HOME hit them."""
        for attempt in range(10):
            try:
                with self._connect() as conn:
                    return work(conn)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if attempt == 9:
                    raise OrchError(f"The job database {self.path} stayed locked: {exc}. "
                                    "Another orch process holds it; try again.") from None
                time.sleep(0.02 * 2**min(attempt, 6))
        raise AssertionError("unreachable")

    def _write(self, sql: str, params: Iterable[Any]) -> int:
        values = tuple(params)  # once: a retry must bind the same values, whatever iterable was given
        return self._retrying(lambda conn: conn.execute(sql, values).rowcount)

    def _read(self, sql: str, params: Iterable[Any]) -> list[sqlite3.Row]:
        values = tuple(params)
        return self._retrying(lambda conn: conn.execute(sql, values).fetchall())

    def insert(self, rec: JobRecord) -> None:
        placeholders = ",".join("?" for _ in _COLUMNS)
        try:
            self._write(f"INSERT INTO jobs ({','.join(_COLUMNS)}) VALUES ({placeholders})", _record_to_row(rec))
        except sqlite3.IntegrityError:
            raise OrchError(f"A job with id '{rec.id}' already exists.") from None

    def upsert(self, rec: JobRecord) -> None:
        """Insert or replace by id, keeping the original queue position (used by `orch sync`)."""
        placeholders = ",".join("?" for _ in _COLUMNS)
        updates = ",".join(f"{c}=excluded.{c}" for c in _COLUMNS if c != "id")
        self._write(f"INSERT INTO jobs ({','.join(_COLUMNS)}) VALUES ({placeholders}) "
                    f"ON CONFLICT(id) DO UPDATE SET {updates}", _record_to_row(rec))

    def get(self, job_id: str) -> JobRecord:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFoundError(f"No job or campaign with id '{job_id}'. Run `orch list` to see the ids.")
        return _row_to_record(rows[0])

    def list(self, states: Iterable[JobState] | None = None, kind: str | None = None) -> list[JobRecord]:
        sql, params = "SELECT * FROM jobs WHERE 1=1", []
        if states is not None:
            wanted = [s.value for s in states]
            sql += f" AND state IN ({','.join('?' for _ in wanted)})"
            params += wanted
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return [_row_to_record(r) for r in self._read(sql + " ORDER BY seq", params)]

    def transition(self, job_id: str, current: JobState, target: JobState, **fields: Any) -> bool:
        """Move `job_id` from `current` to `target` if it is still in `current`. Returns whether it moved."""
        check_transition(current, target)
        fields = {"state": target.value, **{k: _column_value(k, v) for k, v in fields.items()}}
        sets = ",".join(f"{k} = ?" for k in fields)
        return self._write(f"UPDATE jobs SET {sets} WHERE id = ? AND state = ?",
                           [*fields.values(), job_id, current.value]) == 1

    def update(self, job_id: str, **fields: Any) -> None:
        """Change non-state fields (metrics, attempts, message...)."""
        if "state" in fields:
            raise ValueError("use transition() to change state")
        sets = ",".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE jobs SET {sets} WHERE id = ?",
                    [*(_column_value(k, v) for k, v in fields.items()), job_id])


def _column_value(key: str, value: Any) -> Any:
    if key in ("metrics_json", "spec_json") and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return int(value)
    return value

def new_job_id(name: str) -> str:
    # 4 random bytes: many same-second submits of one spec must not collide (they would share a storage prefix).
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def ray_submission_id(rec: JobRecord) -> str:
    """Each (re)submission is a distinct Ray job; the first keeps the plain job id."""
    return rec.id if rec.submissions <= 1 else f"{rec.id}-r{rec.submissions}"
