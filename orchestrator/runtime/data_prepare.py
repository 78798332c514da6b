"""The Ray job of `orch data prepare`: one Ray task per work unit tokenizes its part of the inputs and writes
its shards, then its units/<unit>.json; this driver then writes index.json, last.

    python -m orchestrator.runtime.data_prepare --out URI

The plan (prepare.json) and tokenizer.json are already stored at URI by the control plane. Units whose record
matches the plan are skipped, so a rerun finishes an interrupted preparation without redoing work.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from orchestrator.core.errors import OrchError
from orchestrator.core.prepare_plan import (
    ERROR_PREFIX,
    PreparePlan,
    UnitRecord,
    build_index,
    committed_record,
    read_plan,
)
from orchestrator.core.secrets import load_secrets_file
from orchestrator.core.text_inputs import WorkUnit, iter_pieces
from orchestrator.core.token_shards import INDEX_KEY, TOKENIZER_KEY, Shard, shard_key, unit_key
from orchestrator.storage import ObjectStore, StorageError, open_store

BATCH_CHARS = 4 << 20  # documents are handed to the tokenizer in batches of about this many characters


def load_tokenizer(store: ObjectStore) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(store.get_bytes(TOKENIZER_KEY).decode())


def token_arrays(tokenizer: Any, pieces: Iterable[tuple[str, bool]], eos_id: int,
                 dtype: str) -> Iterator[tuple[np.ndarray, int]]:
    """(ids, documents ended) per batch of pieces: each document's ids followed by eos_id."""
    batch: list[tuple[str, bool]] = []
    size = 0

    def flush() -> tuple[np.ndarray, int]:
        encodings = tokenizer.encode_batch([text for text, _ in batch], add_special_tokens=False)
        parts: list[np.ndarray] = []
        for (_, ends), enc in zip(batch, encodings, strict=True):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            if ends:
                parts.append(np.asarray([eos_id], dtype=dtype))
        return (np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)), sum(ends for _, ends in batch)

    for text, ends in pieces:
        batch.append((text, ends))
        size += len(text)
        if size >= BATCH_CHARS:
            yield flush()
            batch, size = [], 0
    if batch:
        yield flush()


class ShardWriter:
    """Fills shards of exactly `shard_tokens` ids (the unit's last one may be shorter) and stores each."""

    def __init__(self, store: ObjectStore, unit: int, shard_tokens: int, dtype: str, scratch: str) -> None:
        self.store, self.unit, self.dtype, self.scratch = store, unit, dtype, scratch
        self.buffer = np.empty(shard_tokens, dtype=dtype)
        self.filled = 0
        self.shards: list[Shard] = []

    def add(self, ids: np.ndarray) -> None:
        while len(ids):
            take = min(len(ids), len(self.buffer) - self.filled)
            self.buffer[self.filled:self.filled + take] = ids[:take]
            self.filled += take
            ids = ids[take:]
            if self.filled == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        if not self.filled:
            return
        data = self.buffer[:self.filled].tobytes()
        key = shard_key(self.unit, len(self.shards))
        path = os.path.join(self.scratch, "shard.bin")
        with open(path, "wb") as fh:
            fh.write(data)
        self.store.put_file(key, path)
        self.shards.append(Shard(key=key, tokens=self.filled, sha256=hashlib.sha256(data).hexdigest()))
        self.filled = 0


def prepare_unit(store: ObjectStore, plan: PreparePlan, unit: WorkUnit, tokenizer: Any) -> UnitRecord:
    """Tokenize one unit, store its shards, then its record (the unit's commit)."""
    documents = 0
    with tempfile.TemporaryDirectory(prefix="orch-shard-") as scratch:
        writer = ShardWriter(store, unit.unit, plan.shard_tokens, plan.dtype, scratch)
        for ids, ended in token_arrays(tokenizer, iter_pieces(unit, plan.text_field), plan.eos_id, plan.dtype):
            writer.add(ids)
            documents += ended
        writer.flush()
    # A unit redone after an earlier try (other inputs, a crash) may have left more parts than it has now.
    stale = len(writer.shards)
    while store.exists(shard_key(unit.unit, stale)):
        store.delete(shard_key(unit.unit, stale))
        stale += 1
    record = UnitRecord(unit=unit.unit, signature=plan.unit_signature(unit), documents=documents,
                        shards=tuple(writer.shards))
    store.put_bytes(unit_key(unit.unit), record.to_json())
    return record


def run_unit_task(store_uri: str, unit_number: int) -> int:
    """A Ray task's body: everything it needs is read from storage, so nothing large is pickled."""
    load_secrets_file()
    # One task per CPU: the tokenizer's own thread pool would only compete with the neighbouring tasks.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    store = open_store(store_uri)
    plan = read_plan(store)
    assert plan is not None, f"{store_uri} holds no plan"
    return prepare_unit(store, plan, plan.units[unit_number], load_tokenizer(store)).tokens


def ray_map(store_uri: str, units: list[int]) -> list[int]:
    """One Ray task per unit (one CPU each), retried through storage hiccups; tokens per unit."""
    import ray
    from botocore.exceptions import BotoCoreError

    ray.init(log_to_driver=True)
    # Retried: storage that failed past its own retries, a ranged read dropped mid-stream. Not retried: bad input.
    task = ray.remote(num_cpus=1, max_retries=2,
                      retry_exceptions=[StorageError, BotoCoreError, OSError])(run_unit_task)
    return ray.get([task.remote(store_uri, unit) for unit in units])


def run(store_uri: str, map_units: Callable[[str, list[int]], list[int]] | None = None) -> int:
    """Run the plan's pending units (`map_units`: how; Ray tasks by default), then write index.json."""
    store = open_store(store_uri)
    plan = read_plan(store)
    if plan is None:
        raise OrchError(f"{store_uri} holds no prepare.json; run `orch data prepare` again.")
    pending = [u.unit for u in plan.units if committed_record(store, plan, u) is None]
    print(f"orch data prepare: {len(plan.units)} units, {len(plan.units) - len(pending)} already committed "
          f"(skipped), {len(pending)} to do", flush=True)
    started = time.monotonic()
    tokens = sum((map_units or ray_map)(store_uri, pending)) if pending else 0
    print(f"orch data prepare: {tokens} tokens in {time.monotonic() - started:.1f} s", flush=True)
    records = []
    for unit in plan.units:
        record = committed_record(store, plan, unit)
        if record is None:
            raise OrchError(f"unit {unit.unit} ({unit.uri}) has no committed record after its task ended; run "
                            "`orch data prepare` again (it redoes only the missing units).")
        records.append(record)
    store.put_bytes(INDEX_KEY, build_index(plan, records).to_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    load_secrets_file()
    try:
        return run(args.out)
    except Exception as exc:  # noqa: BLE001 - the reason goes to the one line the control plane reads back
        cause = exc
        while getattr(cause, "cause", None) is not None:  # a RayTaskError wraps the task's own exception
            cause = cause.cause
        message = str(cause) if isinstance(cause, OrchError) else f"{type(cause).__name__}: {cause}"
        print(ERROR_PREFIX + " ".join(message.split()), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
