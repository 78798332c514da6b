"""What `orch data prepare` hands from the control plane to the Ray job, and how the job's results become the
dataset's index (token_shards.py is the layout both follow).

    <dataset>/prepare.json      the plan: work units, tokenizer hash, shard size, split settings (written before
                                any unit runs; a rerun compares itself with it)
    <dataset>/units/<unit>.json one unit's shards, with the unit and tokenizer it was made from: a rerun skips a
                                unit whose record matches the plan
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.core.errors import OrchError
from orchestrator.core.text_inputs import WorkUnit
from orchestrator.core.token_shards import DatasetIndex, Shard, dtype_for_vocab, unit_key
from orchestrator.storage import NotFound, ObjectStore

PLAN_KEY = "prepare.json"
PLAN_FORMAT = "orch-prepare-plan/1"
ERROR_PREFIX = "orch data prepare failed: "  # the Ray job's last line when it fails, read back by the CLI


def tokenizer_sha256(tokenizer_json: str) -> str:
    return hashlib.sha256(tokenizer_json.encode()).hexdigest()


@dataclass(frozen=True)
class PreparePlan:
    units: tuple[WorkUnit, ...]
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    text_field: str
    shard_tokens: int
    val_fraction: float
    sources: tuple[str, ...]
    trained_vocab_size: int | None = None  # set when the tokenizer was trained here (--vocab-size)
    format: str = PLAN_FORMAT

    @property
    def dtype(self) -> str:
        return dtype_for_vocab(self.vocab_size)

    def unit_signature(self, unit: WorkUnit) -> dict[str, Any]:
        """Everything a unit's shards depend on: a record with another signature is redone."""
        return {**unit.as_dict(), "tokenizer_sha256": self.tokenizer_sha256, "text_field": self.text_field,
                "shard_tokens": self.shard_tokens, "dtype": self.dtype, "eos_id": self.eos_id}

    def to_json(self) -> bytes:
        data = asdict(self)
        data["units"] = [u.as_dict() for u in self.units]
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PreparePlan:
        data = json.loads(raw)
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"{PLAN_KEY} has format {data.get('format')!r}, expected {PLAN_FORMAT!r}")
        data["units"] = tuple(WorkUnit(**u) for u in data["units"])
        data["sources"] = tuple(data["sources"])
        return cls(**data)


def read_plan(store: ObjectStore) -> PreparePlan | None:
    try:
        raw = store.get_bytes(PLAN_KEY)
    except NotFound:
        return None
    try:
        return PreparePlan.from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable plan is replaced; unit records are checked one by one anyway


@dataclass(frozen=True)
class UnitRecord:
    unit: int
    signature: dict[str, Any]
    documents: int
    shards: tuple[Shard, ...] = field(default_factory=tuple)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def to_json(self) -> bytes:
        return json.dumps({"unit": self.unit, "signature": self.signature, "documents": self.documents,
                           "shards": [asdict(s) for s in self.shards]}, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> UnitRecord:
        data = json.loads(raw)
        return cls(unit=int(data["unit"]), signature=dict(data["signature"]), documents=int(data["documents"]),
                   shards=tuple(Shard(**s) for s in data["shards"]))


def committed_record(store: ObjectStore, plan: PreparePlan, unit: WorkUnit) -> UnitRecord | None:
    """The unit's record if it was made from exactly this unit and settings (so the unit is skipped)."""
    try:
        record = UnitRecord.from_json(store.get_bytes(unit_key(unit.unit)))
    except NotFound:
        return None
    except (ValueError, KeyError, TypeError):
        return None
    return record if record.signature == plan.unit_signature(unit) else None


def val_positions(count: int, val_fraction: float) -> set[int]:
    """Which of `count` shards (in key order) are held out: round(count x fraction), at least one, never all,
    spread evenly over the dataset so validation is not one corner of the corpus."""
    if count < 2:
        raise OrchError(f"The inputs made {count} shard{'s' if count != 1 else ''}, but a dataset needs at least "
                        "two (one held out for validation, one to train on). Lower --shard-tokens so the corpus "
                        "fills more shards.")
    n_val = min(max(1, round(count * val_fraction)), count - 1)
    return {int((i + 0.5) * count / n_val) for i in range(n_val)}


def build_index(plan: PreparePlan, records: list[UnitRecord]) -> DatasetIndex:
    shards = sorted((s for r in records for s in r.shards if s.tokens > 0), key=lambda s: s.key)
    held = val_positions(len(shards), plan.val_fraction)
    marked = tuple(Shard(s.key, s.tokens, s.sha256, "val" if i in held else "train") for i, s in enumerate(shards))
    return DatasetIndex(vocab_size=plan.vocab_size, dtype=plan.dtype, eos_id=plan.eos_id, shards=marked,
                        sources=plan.sources)
