"""Streaming prepared datasets: order, rank split, resume, epochs, validation, bounded memory, both stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.token_shards import INDEX_KEY
from orchestrator.storage import ObjectStore, open_store
from orchestrator.workloads.token_stream import BlockCache, RangeShards, TokenStream, open_stream, permute
from tests.workloads.prepared_data import write_prepared

SEQ = 8
VOCAB = 70_000  # uint32 ids, so a token can be its own global position and windows are checkable


def positional(store: ObjectStore, train: list[int], val: list[int]) -> None:
    """Shards whose ids count up across the dataset: a window is right iff it is consecutive and in place."""
    shards, at = [], 0
    for split, sizes in (("train", train), ("val", val)):
        for size in sizes:
            shards.append((split, np.arange(at, at + size)))
            at += size
    write_prepared(store, shards, VOCAB)


@pytest.fixture
def local(tmp_path: Path) -> str:
    path = str(tmp_path / "ds")
    positional(open_store(path), train=[8 * 10 + 1, 8 * 6 + 5], val=[8 * 4 + 1])  # 10 + 6 train, 4 val sequences
    return path


def stream(path: str, **kwargs: int) -> TokenStream:
    return open_stream(path, SEQ, VOCAB, **{"seed": 7, **kwargs})


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 1000, 4099])
def test_permutation_is_a_seeded_bijection(n: int) -> None:
    idx = np.arange(n)
    first = permute(idx, n, key=11)
    assert sorted(first.tolist()) == list(range(n))
    np.testing.assert_array_equal(first, permute(idx, n, key=11))
    np.testing.assert_array_equal(first[3:9], permute(idx[3:9], n, key=11))  # evaluated per index
    if n >= 16:
        assert not np.array_equal(first, permute(idx, n, key=12))
        assert not np.array_equal(first, idx)


def test_windows_are_consecutive_tokens_of_one_split(local: str) -> None:
    s = stream(local)
    for split, low, high in (("train", 0, 8 * 16 + 6), ("val", 8 * 16 + 6, 8 * 20 + 7)):
        windows = s.windows(1, 0, 4, split)
        assert windows.shape == (4, SEQ + 1) and windows.dtype == np.int64
        assert (np.diff(windows, axis=1) == 1).all()
        assert ((windows >= low) & (windows < high)).all()
    every = np.concatenate([s.windows(step, 0, 4) for step in range(1, 5)])
    assert ((every[:, -1] < 81) | (every[:, 0] >= 81)).all()  # no window spans the two train shards


def test_ranks_never_overlap_and_an_epoch_takes_every_sequence_once(local: str) -> None:
    # world 2, accumulation 2, micro batch 2: 8 sequences a step, 2 steps = one epoch of 16
    seen = [seq for step in (1, 2) for rank in (0, 1) for micro in (0, 1)
            for seq in stream(local, rank=rank, world_size=2, accumulation=2).sequence_ids(step, micro, 2).tolist()]
    assert sorted(seen) == list(range(16))


def test_same_global_batch_on_another_worker_count_reads_the_same_sequences(local: str) -> None:
    two = {seq for rank in (0, 1) for seq in stream(local, rank=rank, world_size=2).sequence_ids(3, 0, 2).tolist()}
    one = {seq for micro in (0, 1) for seq in stream(local, accumulation=2).sequence_ids(3, micro, 2).tolist()}
    assert one == two and len(one) == 4


def test_a_fresh_reader_continues_at_the_same_sequence(local: str) -> None:
    """What a resumed job does: nothing carried over, step 5 reads what step 5 of the first run read."""
    first = stream(local, rank=1, world_size=2)
    expected = [first.windows(step, 0, 3) for step in range(1, 8)]
    again = stream(local, rank=1, world_size=2)
    for step in range(5, 8):
        np.testing.assert_array_equal(again.windows(step, 0, 3), expected[step - 1])


def test_epochs_roll_over_into_a_new_order(local: str) -> None:
    s = stream(local)  # 16 train sequences, batches of 4: epoch e is steps 4e+1 .. 4e+4
    epochs = [[seq for step in range(4 * e + 1, 4 * e + 5) for seq in s.sequence_ids(step, 0, 4).tolist()]
              for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(16))
    assert epochs[0] != epochs[1] != epochs[2]
    assert s.epoch(4, 4) == 1.0 and s.epoch(6, 4) == 1.5
    straddling = stream(local).sequence_ids(1, 0, 3)  # batches of 3 do not divide 16: one spans two epochs
    assert len(straddling) == 3
    spanning = s.positions(6, 0, 3)
    assert spanning[0] // 16 == 0 and spanning[-1] // 16 == 1
    assert len(set(s.sequence_ids(6, 0, 3).tolist())) == 3


def test_validation_is_deterministic_per_eval_step_and_disjoint_across_ranks(local: str) -> None:
    a, b = stream(local, rank=0, world_size=2), stream(local, rank=1, world_size=2)
    again = stream(local, rank=0, world_size=2)
    np.testing.assert_array_equal(a.windows(10, 0, 2, "val"), again.windows(10, 0, 2, "val"))
    assert not np.array_equal(a.windows(10, 0, 2, "val"), a.windows(20, 0, 2, "val"))
    assert not set(a.sequence_ids(10, 0, 2, "val").tolist()) & set(b.sequence_ids(10, 0, 2, "val").tolist())


def test_range_reads_match_local_reads_through_a_bounded_cache(local: str, tmp_path: Path) -> None:
    mapped = stream(local)
    ranged = TokenStream(mapped.index, _NotLocal(open_store(local)), SEQ, seed=7, block_bytes=64, cache_bytes=256)
    source = ranged.sources["train"]
    assert isinstance(source, RangeShards)
    for step in range(1, 30):
        np.testing.assert_array_equal(ranged.windows(step, 0, 4), mapped.windows(step, 0, 4))
        assert source.cache.bytes <= 256
    assert source.requests > 0


def test_block_cache_drops_the_least_recently_used() -> None:
    cache = BlockCache(max_bytes=20)
    for i in range(3):
        cache.put((0, i), b"x" * 10)
    assert cache.bytes == 20 and cache.get((0, 0)) is None and cache.get((0, 2)) == b"x" * 10


def test_an_s3_dataset_streams_by_ranged_reads(local: str, s3_env: str) -> None:
    remote = open_store(s3_env + "/ds")
    positional(remote, train=[8 * 10 + 1, 8 * 6 + 5], val=[8 * 4 + 1])
    s3, disk = stream(remote.uri, rank=1, world_size=2), stream(local, rank=1, world_size=2)
    assert isinstance(s3.sources["train"], RangeShards)
    for step, split in ((1, "train"), (9, "train"), (4, "val")):
        np.testing.assert_array_equal(s3.windows(step, 0, 3, split), disk.windows(step, 0, 3, split))


def test_start_checks_name_the_problem(tmp_path: Path) -> None:
    path = str(tmp_path / "ds")
    store = open_store(path)
    write_prepared(store, [("train", np.arange(100)), ("val", np.arange(50))], 300, index=False)
    with pytest.raises(ValueError, match="holds no index.json.*orch data prepare"):
        stream(path)
    write_prepared(store, [("train", np.arange(100)), ("val", np.arange(50))], 300)
    with pytest.raises(ValueError, match=r"data.path .*ds: the dataset's vocabulary has 300 ids but model.vocab_size"):
        open_stream(path, SEQ, 256, seed=0)
    with pytest.raises(ValueError, match="val split holds no sequence of model.seq_len"):
        open_stream(path, 64, 300, seed=0)
    store.put_bytes(store.list("shards")[0].key, b"\0\0")
    with pytest.raises(ValueError, match="shard shards/00000-00000.bin is 2 bytes, expected 200"):
        open_stream(path, SEQ, 300, seed=0)
    assert store.exists(INDEX_KEY)


class _NotLocal:
    """A local store seen only through the ObjectStore interface, so the reader takes the ranged-read path."""

    def __init__(self, store: ObjectStore):
        self._store, self.uri = store, store.uri

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._store.get_range(key, start, length)


def test_local_reads_keep_a_bounded_number_of_files_open(local: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.workloads.token_stream import LocalShards

    expected = [stream(local).windows(step, 0, 4) for step in range(1, 9)]
    monkeypatch.setattr(LocalShards, "MAX_OPEN", 1)
    s = stream(local)
    for step in range(1, 9):
        np.testing.assert_array_equal(s.windows(step, 0, 4), expected[step - 1])
        assert len(s.sources["train"]._files) == 1  # type: ignore[union-attr]


def test_a_dataset_orch_data_prepare_wrote_streams(tmp_path: Path) -> None:
    """The layout contract end to end: `orch data prepare`'s own code (units run here), then this reader."""
    from orchestrator.workloads.gpt.data import CORPUS_PATH
    from tests.control.test_data_prepare import prepare_here

    text = tmp_path / "corpus.txt"
    text.write_bytes(CORPUS_PATH.read_bytes()[:40_000])
    out = tmp_path / "prepared"
    prepare_here([str(text)], out, vocab_size=320, shard_tokens=2_000)
    s = open_stream(str(out), 16, 320, seed=0, rank=1, world_size=2)
    assert s.layouts["train"].sequences > 0 and s.layouts["val"].sequences > 0
    for split in ("train", "val"):
        windows = s.windows(3, 0, 4, split)
        assert windows.shape == (4, 17) and windows.min() >= 0 and windows.max() < 320
    with pytest.raises(ValueError, match="model.vocab_size"):
        open_stream(str(out), 16, 256, seed=0)
