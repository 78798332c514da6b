"""Byte-level tokenizer, token loading (built-in corpus or token file) and random-window batches."""

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from orchestrator.workloads.gpt.config import GPTDataConfig

CORPUS_PATH = Path(__file__).parent / "corpus" / "corpus.txt"


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids: list[int]) -> str:
    # A sampled byte sequence need not be valid UTF-8.
    return bytes(ids).decode("utf-8", errors="replace")


def parse_token_file(name: str, raw: bytes) -> np.ndarray:
    """Token ids from the bytes of a .bin (uint16 little-endian, nanoGPT) or .npy file."""
    if name.endswith(".npy"):
        tokens = np.load(io.BytesIO(raw), allow_pickle=False)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            got = f"{tokens.dtype} array of shape {tokens.shape}"
            raise ValueError(f"data.path {name}: expected a 1-D integer array, got a {got}")
        return tokens
    if len(raw) % 2:
        raise ValueError(f"data.path {name}: a .bin token file holds uint16 ids, but has an odd byte count")
    return np.frombuffer(raw, dtype="<u2")


def load_tokens(cfg: GPTDataConfig, vocab_size: int, read_bytes: Callable[[str], bytes]) -> np.ndarray:
    """The token ids to train on; `read_bytes` fetches data.path (local or s3://), the corpus ships here."""
    if cfg.path is None:
        tokens = np.frombuffer(CORPUS_PATH.read_bytes(), dtype=np.uint8)
        source = "the built-in byte-level corpus"
    else:
        tokens = parse_token_file(cfg.path, read_bytes(cfg.path))
        source = f"data.path {cfg.path}"
    if tokens.size == 0:
        raise ValueError(f"{source} holds no tokens")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise ValueError(
            f"{source} holds token ids in [{tokens.min()}, {tokens.max()}], "
            f"but model.vocab_size={vocab_size}: every id must be below model.vocab_size"
        )
    return tokens


class TokenDataset:
    """A 1-D token stream split into train (head) and val (tail) by val_fraction, nanoGPT style."""

    def __init__(self, tokens: np.ndarray, val_fraction: float):
        n_val = max(1, int(len(tokens) * val_fraction))
        # Stays in the file's dtype (uint16 for .bin); only the sampled windows are widened to int64.
        self.splits = {"train": tokens[:-n_val], "val": tokens[-n_val:]}

    def batch(
        self, generator: torch.Generator, batch_size: int, seq_len: int, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows x and their next-token targets y, both (batch_size, seq_len) int64.

        Only `generator` is consumed, so the batch is a pure function of its state: this is what makes a
        resumed run see exactly the batches the interrupted one would have.
        """
        data = self.splits[split]
        if len(data) <= seq_len:
            raise ValueError(
                f"the {split} split has {len(data)} tokens, fewer than model.seq_len + 1 = {seq_len + 1}; "
                "use more data or change data.val_fraction"
            )
        starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator).numpy()
        windows = torch.from_numpy(data[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]
