"""Streaming a prepared token dataset (orchestrator/core/token_shards.py) into training, without holding it.

A split's sequences are the windows of seq_len + 1 tokens at stride seq_len inside each of its shards (a window
never spans two shards). Epoch e of the train split visits every sequence once, in a seeded permutation of
(train.seed, e); the permutation is a keyed bijection evaluated per index, so nothing of the dataset's size is
ever built. The global sample position a rank reads at (step, micro, i) is a pure function of the step, its
slot in the global batch and the batch shape, so ranks never overlap and a resumed job reads on at exactly the
sequence the interrupted one would have, with no reader state in its checkpoints.

Each rank reads only the sequences it takes: a local dataset by positional reads of each window (the kernel's
page cache holds what was touched, not the process), a remote one by ranged reads through a small bounded block
cache. So a worker's memory does not grow with the dataset.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from orchestrator.core.token_shards import DatasetIndex, Shard, itemsize, read_index
from orchestrator.storage import LocalStore, ObjectStore, open_store

_MASK64 = (1 << 64) - 1
BLOCK_BYTES = 64 * 1024  # a ranged read's unit: a few sequences' worth, small enough that random access wastes little
CACHE_BYTES = 32 * 1024 * 1024  # per reader: bounds a rank's memory whatever the dataset's size
READ_THREADS = 8  # concurrent ranged reads per batch: hides the object store's per-request latency


def _mix(z: int) -> int:
    """splitmix64's finalizer: a cheap, well-spread 64-bit hash of an int."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _mix_array(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)  # uint64 arrays wrap silently, as the hash wants
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def permutation_key(*parts: int) -> int:
    key = 0
    for part in parts:
        key = _mix(key ^ (part & _MASK64))
    return key


def permute(idx: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """The seeded permutation of [0, n) keyed by `key`, evaluated at `idx` (each in [0, n)).

    A balanced Feistel network over the smallest even-bit power of two >= n (< 4n), cycle-walked back into
    [0, n): a bijection, so an epoch takes every sequence exactly once, in O(len(idx)) time and memory.
    """
    if n <= 1:
        return np.zeros_like(np.asarray(idx, dtype=np.int64))
    half = max(1, math.ceil(math.log2(n) / 2))
    low_mask = np.uint64((1 << half) - 1)
    round_keys = [np.uint64(_mix(key + r)) for r in range(rounds)]

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & low_mask
        for rk in round_keys:
            left, right = right, left ^ (_mix_array(right ^ rk) & low_mask)
        return (left << np.uint64(half)) | right

    x = encrypt(np.asarray(idx, dtype=np.uint64))
    outside = x >= n
    while outside.any():  # cycle walking: ends because idx < n lies on the same cycle
        x[outside] = encrypt(x[outside])
        outside = x >= n
    return x.astype(np.int64)


class SplitLayout:
    """Where each sequence of one split lives: (shard number within the split, first token)."""

    def __init__(self, shards: Sequence[Shard], seq_len: int):
        self.shards, self.seq_len = tuple(shards), seq_len
        counts = [max(0, (s.tokens - 1) // seq_len) for s in self.shards]
        self.offsets = np.cumsum([0, *counts], dtype=np.int64)  # one entry per shard: tiny
        self.sequences = int(self.offsets[-1])

    def locate(self, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self.offsets, seq, side="right") - 1
        return shard, (seq - self.offsets[shard]) * self.seq_len


class LocalShards:
    """Local shards read by positional reads of exactly each window.

    Not memory maps: every page of a map a process touches stays in its resident set, so over an epoch a
    rank's RSS would grow to the dataset's size. pread copies only the window; the kernel's page cache (shared,
    reclaimable) is what keeps hot shards fast.
    """

    MAX_OPEN = 64  # open shard files kept per split; a dataset may have thousands

    def __init__(self, root: Path, shards: Sequence[Shard], dtype: str):
        self.paths, self.dtype = [root / s.key for s in shards], np.dtype(dtype)
        self._files: OrderedDict[int, int] = OrderedDict()

    def _fd(self, shard: int) -> int:
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
            if len(self._files) > self.MAX_OPEN:
                os.close(self._files.popitem(last=False)[1])
        self._files.move_to_end(shard)
        return fd

    def windows(self, shard: np.ndarray, start: np.ndarray, length: int) -> np.ndarray:
        size = self.dtype.itemsize
        out = np.empty((len(shard), length), dtype=np.int64)
        for row, (i, s) in enumerate(zip(shard.tolist(), start.tolist(), strict=True)):
            raw = os.pread(self._fd(i), length * size, s * size)
            out[row] = np.frombuffer(raw, dtype=self.dtype, count=length)
        return out

    def __del__(self) -> None:
        for fd in getattr(self, "_files", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)


class BlockCache:
    """Least-recently-used blocks of shards, at most `max_bytes` of them."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._blocks: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    def get(self, block: tuple[int, int]) -> bytes | None:
        data = self._blocks.get(block)
        if data is not None:
            self._blocks.move_to_end(block)
        return data

    def put(self, block: tuple[int, int], data: bytes) -> None:
        if block in self._blocks:
            return
        self._blocks[block] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes and self._blocks:
            _, dropped = self._blocks.popitem(last=False)
            self.bytes -= len(dropped)


class RangeShards:
    """Shards in any object store, read as aligned blocks by ranged requests through a bounded cache."""

    def __init__(self, store: ObjectStore, shards: Sequence[Shard], dtype: str,
                 block_bytes: int = BLOCK_BYTES, cache_bytes: int = CACHE_BYTES):
        self.store, self.keys, self.dtype = store, [s.key for s in shards], np.dtype(dtype)
        self.block_bytes = block_bytes
        self.cache = BlockCache(cache_bytes)
        self.requests = 0  # ranged reads made (tests and benchmarks read it)
        self._pool: ThreadPoolExecutor | None = None

    def windows(self, shard: np.ndarray, start: np.ndarray, length: int) -> np.ndarray:
        size = self.dtype.itemsize
        spans = [(i, s * size, (s + length) * size) for i, s in zip(shard.tolist(), start.tolist(), strict=True)]
        block = self.block_bytes
        needed = {(i, b) for i, lo, hi in spans for b in range(lo // block, (hi - 1) // block + 1)}
        # This batch's blocks stay referenced here even if the cache is smaller than one batch needs.
        have = {block: data for block in needed if (data := self.cache.get(block)) is not None}
        missing = sorted(needed - have.keys())
        if missing:
            self.requests += len(missing)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="orch-data")
            fetched = list(self._pool.map(self._fetch, missing))
            for block, data in zip(missing, fetched, strict=True):
                have[block] = data
                self.cache.put(block, data)
        out = np.empty((len(spans), length), dtype=np.int64)
        for row, (i, lo, hi) in enumerate(spans):
            first, last = lo // self.block_bytes, (hi - 1) // self.block_bytes
            joined = b"".join(have[(i, b)] for b in range(first, last + 1))
            offset = lo - first * self.block_bytes
            out[row] = np.frombuffer(joined, dtype=self.dtype, count=length, offset=offset)
        return out

    def _fetch(self, block: tuple[int, int]) -> bytes:
        shard, number = block
        return self.store.get_range(self.keys[shard], number * self.block_bytes, self.block_bytes)


class TokenStream:
    """The sequences of a prepared dataset that one rank trains and evaluates on.

    Train sample i of micro batch `micro` at `step` (steps count from 1) is global position
    (step - 1) * G + (micro * world_size + rank) * B + i, with G = world_size * accumulation * B: the slot
    order of WorkerContext.generator, so a job resumed on another worker count with the same global batch
    reads the same sequences. Position p is sequence permute(p mod N, N, key(seed, p div N)).
    """

    def __init__(self, index: DatasetIndex, store: ObjectStore, seq_len: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, accumulation: int = 1, where: str | None = None,
                 block_bytes: int = BLOCK_BYTES, cache_bytes: int = CACHE_BYTES):
        self.index, self.seq_len, self.seed = index, seq_len, seed
        self.rank, self.world_size, self.accumulation = rank, world_size, accumulation
        self.layouts = {split: SplitLayout(index.split(split), seq_len) for split in ("train", "val")}
        where = where or store.uri
        for split, layout in self.layouts.items():
            if layout.sequences == 0:
                raise ValueError(
                    f"data.path {where}: the {split} split holds no sequence of model.seq_len + 1 = {seq_len + 1} "
                    f"tokens (its shards hold {index.tokens(split)} tokens); prepare more data"
                    + (" with a validation share" if split == "val" else "") + " or lower model.seq_len.")
        self.sources = {
            split: (LocalShards(store.root, layout.shards, index.dtype) if isinstance(store, LocalStore)
                    else RangeShards(store, layout.shards, index.dtype, block_bytes, cache_bytes))
            for split, layout in self.layouts.items()
        }

    def positions(self, step: int, micro: int, batch_size: int) -> np.ndarray:
        global_batch = self.world_size * self.accumulation * batch_size
        slot = micro * self.world_size + self.rank
        return (step - 1) * global_batch + slot * batch_size + np.arange(batch_size, dtype=np.int64)

    def sequence_ids(self, step: int, micro: int, batch_size: int, split: str = "train") -> np.ndarray:
        n = self.layouts[split].sequences
        if split == "train":
            positions = self.positions(step, micro, batch_size)
            epochs, idx = positions // n, positions % n
            out = np.empty_like(idx)
            for epoch in np.unique(epochs).tolist():  # a batch at an epoch's end spans two permutations
                rows = epochs == epoch
                out[rows] = permute(idx[rows], n, permutation_key(self.seed, epoch))
            return out
        # Validation: eval batch `micro` of the evaluation at `step`, a pure function of both; ranks disjoint.
        slots = (micro * self.world_size + self.rank) * batch_size + np.arange(batch_size, dtype=np.int64)
        return permute(slots % n, n, permutation_key(self.seed, 1 << 40, step))

    def windows(self, step: int, micro: int, batch_size: int, split: str = "train") -> np.ndarray:
        """(batch_size, seq_len + 1) int64 token windows."""
        shard, start = self.layouts[split].locate(self.sequence_ids(step, micro, batch_size, split))
        return self.sources[split].windows(shard, start, self.seq_len + 1)

    def epoch(self, step: int, batch_size: int) -> float:
        """Epochs of the train split completed after `step`."""
        global_batch = self.world_size * self.accumulation * batch_size
        return step * global_batch / self.layouts["train"].sequences


def open_stream(path: str, seq_len: int, vocab_size: int, **kwargs: int) -> TokenStream:
    """The stream of the prepared dataset at `path` (local or s3://), checked against the model's vocabulary."""
    store = open_store(path)
    index = read_index(store)
    if index.vocab_size > vocab_size:
        raise ValueError(
            f"data.path {path}: the dataset's vocabulary has {index.vocab_size} ids but model.vocab_size is "
            f"{vocab_size}; set model.vocab_size to at least {index.vocab_size}.")
    _check_shards(store, index, path)
    return TokenStream(index, store, seq_len, where=path, **kwargs)


def _check_shards(store: ObjectStore, index: DatasetIndex, path: str) -> None:
    """Every shard the index lists is there with its full size: one listing, not one request per shard."""
    folders = {shard.key.rpartition("/")[0] for shard in index.shards}  # "shards" in prepare's layout
    sizes = {info.key: info.size for folder in folders for info in store.list(folder)}
    for shard in index.shards:
        want = shard.tokens * itemsize(index.dtype)
        if sizes.get(shard.key) != want:
            got = "missing" if shard.key not in sizes else f"{sizes[shard.key]} bytes, expected {want}"
            raise ValueError(f"data.path {path}: shard {shard.key} is {got}; the dataset is damaged, prepare it "
                             "again with `orch data prepare`.")
