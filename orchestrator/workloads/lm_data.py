"""The one data interface language-model training loops use, whatever `data.path` names.

    data = open_lm_data(data_cfg, seq_len, vocab_size, ctx)
    x, y = data.batch(step, micro, batch_size)            # train micro batch `micro` of `step`
    x, y = data.batch(step, i, batch_size, split="val")   # eval batch i of the evaluation at `step`
    metrics |= data.metrics(step)                         # {"epoch": ...} for a prepared dataset

A prepared dataset (orchestrator/core/token_shards.py) streams in a deterministic, rank-disjoint, resumable
order (workloads/token_stream.py); a token file or the bundled corpus gives random windows drawn from the
worker's seeded generators, as it always did. Both are pure functions of their arguments and the job's seed,
so a resumed run sees exactly the batches the interrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from orchestrator.core.token_shards import is_prepared_dataset_path
from orchestrator.workloads.gpt.config import GPTDataConfig
from orchestrator.workloads.gpt.data import TokenDataset, load_tokens
from orchestrator.workloads.token_stream import TokenStream, open_stream

if TYPE_CHECKING:
    from orchestrator.runtime.worker import WorkerContext


class LMData(Protocol):
    def batch(self, step: int, micro: int, batch_size: int,
              split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x and next-token targets y, both (batch_size, seq_len) int64 on the CPU."""
        ...

    def metrics(self, step: int) -> dict[str, float]:
        """What to add to the step's metrics (the epoch, where the data has epochs)."""
        ...


def open_lm_data(cfg: GPTDataConfig, seq_len: int, vocab_size: int, ctx: WorkerContext) -> LMData:
    """The data of a job's `data` section for this rank, checked against the model (clear errors otherwise)."""
    if cfg.path is not None and is_prepared_dataset_path(cfg.path):
        ds = ctx.spec.deepspeed
        stream = open_stream(cfg.path, seq_len, vocab_size, seed=ctx.spec.train.seed, rank=ctx.rank,
                             world_size=ctx.world_size, accumulation=ds.gradient_accumulation_steps)
        return StreamedData(stream, ds.micro_batch_size)
    return RandomWindows(TokenDataset(load_tokens(cfg, vocab_size, ctx.read_bytes), cfg.val_fraction), seq_len, ctx)


def random_token_batches(vocab_size: int, batch_size: int, seq_len: int
                         ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Random (inputs, next-token targets) batches: what `orch estimate --probe` times an LM's steps on."""
    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, vocab_size, (batch_size, seq_len))
        return x, torch.roll(x, -1, dims=1)

    return batch


def _split_windows(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    tensor = torch.from_numpy(windows)
    return tensor[:, :-1], tensor[:, 1:]


class StreamedData:
    """A prepared dataset's batches, each train batch read while the model trains on the one before.

    The order is a pure function of the step, so the next micro batch is known and its (ranged) reads overlap
    the current forward/backward. One thread at a time touches the stream: a batch waits for any read ahead.
    """

    def __init__(self, stream: TokenStream, micro_batch_size: int):
        self.stream, self.micro_batch_size = stream, micro_batch_size
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="orch-read-ahead")
        self._ahead: tuple[tuple[int, int, int, str], Future[np.ndarray]] | None = None

    def batch(self, step: int, micro: int, batch_size: int,
              split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        key = (step, micro, batch_size, split)
        windows = None
        if self._ahead is not None:
            ahead_key, future = self._ahead
            try:
                ready = future.result()
            except Exception:  # read again below, where a lasting error is raised in the loop's own thread
                ready, self._ahead = None, None
            if ahead_key == key:
                windows, self._ahead = ready, None
        if windows is None:
            windows = self.stream.windows(*key)
        if split == "train":
            following = (step, micro + 1) if micro + 1 < self.stream.accumulation else (step + 1, 0)
            ahead = (*following, batch_size, split)
            self._ahead = (ahead, self._pool.submit(self.stream.windows, *ahead))
        return _split_windows(windows)

    def metrics(self, step: int) -> dict[str, float]:
        return {"epoch": round(self.stream.epoch(step, self.micro_batch_size), 6)}


class RandomWindows:
    """A token file or the corpus: random windows from WorkerContext.generator, exactly the draws of old."""

    def __init__(self, dataset: TokenDataset, seq_len: int, ctx: WorkerContext):
        self.dataset, self.seq_len, self.ctx = dataset, seq_len, ctx
        # An evaluation draws its batches one after another from one generator per eval step; kept here so
        # batch i is the i-th draw (asked out of order, the generator is rebuilt and wound forward).
        self._val: tuple[int, int, torch.Generator] | None = None

    def batch(self, step: int, micro: int, batch_size: int,
              split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return self.dataset.batch(self.ctx.generator(step, micro), batch_size, self.seq_len)
        if self._val is None or self._val[:2] != (step, micro):
            generator = self.ctx.generator(step, split=split)
            for _ in range(micro):
                self.dataset.batch(generator, batch_size, self.seq_len, split)
            self._val = (step, micro, generator)
        x, y = self.dataset.batch(self._val[2], batch_size, self.seq_len, split)
        self._val = (step, micro + 1, self._val[2])
        return x, y

    def metrics(self, step: int) -> dict[str, float]:
        return {}
