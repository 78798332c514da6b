"""What the Python SDK returns: small frozen dataclasses, never index rows or raw storage JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class JobStatus:
    """One job or campaign as the index knows it (reconciled with Ray and storage when it is active).

    `metrics` holds the newest value of every metric (a campaign: trial counts and the best value so far);
    `tracking` what the experiment tracker logging reported (`{}` when no tracker is configured)."""

    id: str
    kind: str
    name: str
    state: str
    attempts: int
    storage_uri: str
    ray_address: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    message: str
    cpus: float
    gpus: float
    metrics: dict[str, Any] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"

    def as_dict(self) -> dict[str, Any]:
        """The same keys as `orch status --json` (plus `tracking` when a tracker is configured)."""
        data = {k: getattr(self, k) for k in ("id", "kind", "name", "state", "attempts", "storage_uri", "ray_address",
                                              "created_at", "started_at", "finished_at", "message", "cpus", "gpus",
                                              "metrics")}
        if self.tracking:
            data["tracking"] = self.tracking
        return data


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    created: str | None
    size_bytes: int
    committed: bool
    verified: bool  # its manifest lists every file with the right size (`verify()` re-hashes them)
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "created": self.created, "size_bytes": self.size_bytes,
                "committed": self.committed, "verified": self.verified, "metrics": self.metrics}


@dataclass(frozen=True)
class VerifyResult:
    step: int
    ok: bool
    checked_files: int
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trial:
    """One trial of a campaign: its state, the last value of the campaign's metric and where it is stored."""

    id: str
    state: str
    config: dict[str, Any]
    value: float | None  # the last measured value of the campaign metric
    value_step: int | None
    best_value: float | None
    steps: int
    early_stopped: bool
    store_uri: str
    reason: str = ""

    @classmethod
    def from_summary(cls, row: dict[str, Any]) -> Trial:
        return cls(id=row["id"], state=row["state"], config=dict(row.get("config") or {}),
                   value=row.get("last_metric"), value_step=row.get("last_metric_step"),
                   best_value=row.get("best_metric"), steps=int(row.get("steps") or 0),
                   early_stopped=bool(row.get("early_stopped")), store_uri=row.get("store_uri", ""),
                   reason=row.get("reason", ""))


@dataclass(frozen=True)
class BestTrial:
    """The campaign's best trial so far and the checkpoint holding the model that was measured."""

    id: str
    metric: str
    value: float
    step: int | None
    state: str
    config: dict[str, Any]
    checkpoint_step: int | None
    checkpoint_uri: str | None

    @classmethod
    def from_summary(cls, row: dict[str, Any]) -> BestTrial:
        return cls(id=row["id"], metric=row["metric"], value=float(row["value"]), step=row.get("step"),
                   state=row["state"], config=dict(row.get("config") or {}), checkpoint_step=row.get("checkpoint_step"),
                   checkpoint_uri=row.get("checkpoint_uri"))


@dataclass(frozen=True)
class ExportResult:
    path: str
    step: int
    tensors: int
    parameters: int
    shards: int = 1  # safetensors files written (format "hf" above its max shard size)
