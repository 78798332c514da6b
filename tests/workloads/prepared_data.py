"""Writes small prepared token datasets in the layout of orchestrator/core/token_shards.py, for tests.

Tests of streaming do not depend on `orch data prepare`: they build the shards, units and index directly.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from orchestrator.core.token_shards import INDEX_KEY, DatasetIndex, Shard, dtype_for_vocab, shard_key, unit_key
from orchestrator.storage import ObjectStore


def write_prepared(store: ObjectStore, shards: list[tuple[str, np.ndarray]], vocab_size: int,
                   eos_id: int = 0, index: bool = True) -> DatasetIndex:
    """One unit per shard; `shards` is (split, token ids). index.json last, as prepare commits it."""
    dtype = dtype_for_vocab(vocab_size)
    entries = []
    for unit, (split, tokens) in enumerate(shards):
        raw = np.asarray(tokens).astype(dtype).tobytes()
        shard = Shard(key=shard_key(unit, 0), tokens=len(tokens), sha256=hashlib.sha256(raw).hexdigest(), split=split)
        store.put_bytes(shard.key, raw)
        store.put_bytes(unit_key(unit), json.dumps({"shards": [shard.__dict__]}).encode())
        entries.append(shard)
    result = DatasetIndex(vocab_size=vocab_size, dtype=dtype, eos_id=eos_id, shards=tuple(entries))
    if index:
        store.put_bytes(INDEX_KEY, result.to_json())
    return result


def random_corpus(store: ObjectStore, train_shards: int, val_shards: int, tokens_per_shard: int,
                  vocab_size: int, seed: int = 0) -> DatasetIndex:
    """Random ids in shards of one size: enough for a tiny model to learn something."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * train_shards + ["val"] * val_shards
    return write_prepared(store, [(split, rng.integers(0, vocab_size, tokens_per_shard)) for split in splits],
                          vocab_size)
