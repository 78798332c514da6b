"""The prepared token dataset: what `orch data prepare` writes and what training jobs stream from.

    <dataset>/tokenizer.json            the `tokenizers` tokenizer the ids come from (stored first)
    <dataset>/shards/<unit>-<part>.bin  token ids, little-endian `index.dtype`, documents joined by eos_id
    <dataset>/units/<unit>.json         one work unit's shards (written after them: a rerun skips the unit)
    <dataset>/index.json                every shard with its split, token count and sha256; written LAST

A dataset without index.json is not a dataset yet (same commit rule as checkpoints): readers refuse it and a
rerun of `prepare` finishes it. Torch-free: the control plane and the workers both read this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.storage import ObjectStore

FORMAT = "orch-token-shards/1"
INDEX_KEY = "index.json"
TOKENIZER_KEY = "tokenizer.json"
SHARDS_DIR = "shards/"
UNITS_DIR = "units/"
SPLITS = ("train", "val")
TOKEN_FILE_SUFFIXES = (".bin", ".npy")  # a data.path ending so is one token file; anything else a dataset


def is_prepared_dataset_path(path: str) -> bool:
    """Whether a job's data.path names a prepared dataset (a directory or prefix) rather than one token file."""
    return not path.endswith(TOKEN_FILE_SUFFIXES)


def dtype_for_vocab(vocab_size: int) -> str:
    """The narrowest unsigned little-endian dtype every id of the vocabulary fits."""
    return "<u2" if vocab_size <= 2**16 else "<u4"


def itemsize(dtype: str) -> int:
    return {"<u2": 2, "<u4": 4}[dtype]


def shard_key(unit: int, part: int) -> str:
    return f"{SHARDS_DIR}{unit:05d}-{part:05d}.bin"


def unit_key(unit: int) -> str:
    return f"{UNITS_DIR}{unit:05d}.json"


@dataclass(frozen=True)
class Shard:
    key: str  # relative to the dataset, e.g. shards/00003-00000.bin
    tokens: int
    sha256: str
    split: str = "train"


@dataclass(frozen=True)
class DatasetIndex:
    vocab_size: int
    dtype: str
    eos_id: int
    shards: tuple[Shard, ...]
    tokenizer: str = TOKENIZER_KEY
    sources: tuple[str, ...] = field(default_factory=tuple)  # the inputs, as given (for people reading it)
    format: str = FORMAT

    def split(self, name: str) -> tuple[Shard, ...]:
        return tuple(s for s in self.shards if s.split == name)

    def tokens(self, split: str | None = None) -> int:
        return sum(s.tokens for s in self.shards if split is None or s.split == split)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["shards"] = [asdict(s) for s in self.shards]
        data["sources"] = list(self.sources)
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> DatasetIndex:
        try:
            data: Any = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            shards = tuple(Shard(**s) for s in data["shards"])
            index = cls(vocab_size=int(data["vocab_size"]), dtype=str(data["dtype"]), eos_id=int(data["eos_id"]),
                        shards=shards, tokenizer=str(data.get("tokenizer", TOKENIZER_KEY)),
                        sources=tuple(data.get("sources", ())))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{where}/{INDEX_KEY} is not a prepared dataset index ({exc}); prepare it again "
                             "with `orch data prepare`") from None
        if index.dtype not in ("<u2", "<u4") or any(s.split not in SPLITS for s in shards):
            raise ValueError(f"{where}/{INDEX_KEY} names an unknown dtype or split; prepare it again")
        return index


def read_index(store: ObjectStore) -> DatasetIndex:
    """The committed index of the dataset at `store`; a clear error when there is none (not prepared, or unfinished)."""
    if not store.exists(INDEX_KEY):
        raise ValueError(f"{store.uri} holds no {INDEX_KEY}: it is not a prepared dataset, or its preparation did "
                         "not finish. Run `orch data prepare INPUT... --out " + store.uri + "` (a rerun resumes).")
    return DatasetIndex.from_json(store.get_bytes(INDEX_KEY), store.uri)
