import io

import numpy as np
import pytest
import torch

from orchestrator.workloads.gpt.config import GPTDataConfig
from orchestrator.workloads.gpt.data import CORPUS_PATH, TokenDataset, decode, encode, load_tokens


def test_encode_decode_round_trip():
    text = "Return the sum of x and y — naïve ✓\n"
    ids = encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode("utf-8"))
    assert decode(ids) == text


def test_built_in_corpus_ships_with_the_repo():
    assert 500_000 <= CORPUS_PATH.stat().st_size <= 2_000_000
    CORPUS_PATH.read_text(encoding="utf-8")  # real text: valid UTF-8
    tokens = load_tokens(GPTDataConfig(), vocab_size=256, read_bytes=fake_storage({}))
    assert tokens.max() < 256 and len(tokens) == CORPUS_PATH.stat().st_size


def fake_storage(files: dict[str, bytes]):
    def read_bytes(uri: str) -> bytes:
        return files[uri]

    return read_bytes


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_loads_nanogpt_bin_files():
    ids = np.array([0, 1, 255, 256, 50256], dtype="<u2")
    read = fake_storage({"s3://bucket/train.bin": ids.tobytes()})
    tokens = load_tokens(GPTDataConfig(path="s3://bucket/train.bin"), vocab_size=50257, read_bytes=read)
    np.testing.assert_array_equal(tokens, ids)


def test_loads_npy_files():
    ids = np.arange(1000, dtype=np.int64)
    read = fake_storage({"/data/tokens.npy": npy_bytes(ids)})
    np.testing.assert_array_equal(load_tokens(GPTDataConfig(path="/data/tokens.npy"), 1000, read), ids)


def test_token_ids_must_fit_the_vocabulary():
    read = fake_storage({"t.bin": np.array([3, 300], dtype="<u2").tobytes()})
    with pytest.raises(ValueError, match=r"data\.path t\.bin.*model\.vocab_size=256"):
        load_tokens(GPTDataConfig(path="t.bin"), vocab_size=256, read_bytes=read)
    with pytest.raises(ValueError, match=r"built-in.*model\.vocab_size=100"):
        load_tokens(GPTDataConfig(), vocab_size=100, read_bytes=fake_storage({}))


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("odd.bin", b"\x01\x00\x02", "odd byte count"),
        ("matrix.npy", npy_bytes(np.zeros((2, 3), dtype=np.int64)), "1-D integer array"),
        ("floats.npy", npy_bytes(np.zeros(3)), "1-D integer array"),
        ("empty.bin", b"", "no tokens"),
    ],
)
def test_malformed_token_files(path, raw, message):
    with pytest.raises(ValueError, match=message):
        load_tokens(GPTDataConfig(path=path), 256, fake_storage({path: raw}))


def test_split_is_head_and_tail():
    dataset = TokenDataset(np.arange(1000, dtype=np.uint16), val_fraction=0.1)
    np.testing.assert_array_equal(dataset.splits["train"], np.arange(900))
    np.testing.assert_array_equal(dataset.splits["val"], np.arange(900, 1000))
    x, y = dataset.batch(torch.Generator().manual_seed(0), 64, 8, "val")
    assert x.min() >= 900 and y.max() < 1000


def test_batches_are_next_token_windows():
    dataset = TokenDataset(np.arange(5000, dtype=np.uint16), val_fraction=0.1)
    x, y = dataset.batch(torch.Generator().manual_seed(0), batch_size=4, seq_len=16)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # on arange tokens, the target of every position is its successor


def test_batches_are_a_pure_function_of_the_generator_seed():
    dataset = TokenDataset(np.random.default_rng(0).integers(0, 256, 10_000), val_fraction=0.1)

    def batch(seed):
        torch.manual_seed(seed + 1000)  # the global RNG must not matter
        return dataset.batch(torch.Generator().manual_seed(seed), 8, 32)

    assert all(torch.equal(a, b) for a, b in zip(batch(7), batch(7), strict=True))
    assert not torch.equal(batch(7)[0], batch(8)[0])


def test_a_split_shorter_than_a_window_is_reported():
    dataset = TokenDataset(np.arange(100, dtype=np.uint16), val_fraction=0.1)
    with pytest.raises(ValueError, match=r"val split has 10 tokens.*model\.seq_len"):
        dataset.batch(torch.Generator(), 1, 16, "val")
