"""open_lm_data: one interface over token files (random windows, as before) and prepared datasets (streamed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from orchestrator.storage import open_store
from orchestrator.workloads.gpt.config import GPTDataConfig
from orchestrator.workloads.gpt.data import TokenDataset
from orchestrator.workloads.lm_data import RandomWindows, StreamedData, open_lm_data
from tests.workloads.prepared_data import write_prepared


def fake_ctx(tmp_path: Path, world_size: int = 1, rank: int = 0) -> SimpleNamespace:
    """What open_lm_data uses of a WorkerContext: the spec's seed and batch shape, the rank, the generators."""
    def generator(step: int, micro: int = 0, split: str = "train") -> torch.Generator:
        return torch.Generator().manual_seed(step * 1000 + micro * 10 + (split == "val"))

    spec = SimpleNamespace(train=SimpleNamespace(seed=3),
                           deepspeed=SimpleNamespace(micro_batch_size=2, gradient_accumulation_steps=1))
    return SimpleNamespace(spec=spec, rank=rank, world_size=world_size, generator=generator,
                           read_bytes=lambda uri: Path(uri).read_bytes())


def test_a_token_file_gives_the_draws_it_always_gave(tmp_path: Path) -> None:
    tokens = np.arange(5000, dtype="<u2") % 256
    (tmp_path / "t.bin").write_bytes(tokens.tobytes())
    ctx = fake_ctx(tmp_path)
    data = open_lm_data(GPTDataConfig(path=str(tmp_path / "t.bin")), 16, 256, ctx)
    assert isinstance(data, RandomWindows) and data.metrics(3) == {}
    old = TokenDataset(tokens, 0.1)
    x, y = data.batch(4, 1, 2)
    ox, oy = old.batch(ctx.generator(4, 1), 2, 16)
    assert torch.equal(x, ox) and torch.equal(y, oy)
    # An evaluation drew all its batches from one generator; batch i is still its i-th draw, in any order.
    generator = ctx.generator(9, split="val")
    draws = [old.batch(generator, 2, 16, "val")[0] for _ in range(3)]
    for i in (0, 1, 2, 1, 0, 2):
        assert torch.equal(data.batch(9, i, 2, "val")[0], draws[i])


def test_a_prepared_dataset_streams_with_epochs(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    write_prepared(open_store(str(path)), [("train", np.arange(161) % 300), ("val", np.arange(200, 233))], 300)
    data = open_lm_data(GPTDataConfig(path=str(path)), 16, 512, fake_ctx(tmp_path, world_size=2, rank=1))
    assert isinstance(data, StreamedData)
    x, y = data.batch(1, 0, 2)
    assert x.shape == y.shape == (2, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert data.metrics(5) == {"epoch": 2.0}  # 10 train sequences, 4 a step (2 ranks x 2)
    vx, _ = data.batch(1, 0, 2, "val")
    assert (vx >= 200).all()  # from the val shard only


def test_reading_ahead_changes_no_batch(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    write_prepared(open_store(str(path)), [("train", np.arange(1601) % 300), ("val", np.arange(200, 233))], 300)
    ctx = fake_ctx(tmp_path)
    ctx.spec.deepspeed.gradient_accumulation_steps = 2
    data, plain = (open_lm_data(GPTDataConfig(path=str(path)), 16, 512, ctx) for _ in range(2))
    assert isinstance(plain, StreamedData)
    # In the loop's order, with evaluations between and a jump (a resume) in the middle.
    calls = [(1, 0, "train"), (1, 1, "train"), (2, 0, "train"), (2, 0, "val"), (2, 1, "val"), (2, 1, "train"),
             (7, 0, "train"), (7, 1, "train"), (8, 0, "train")]
    for step, micro, split in calls:
        expected = plain.stream.windows(step, micro, 2, split)
        x, y = data.batch(step, micro, 2, split)
        assert torch.equal(x, torch.from_numpy(expected[:, :-1])) and torch.equal(y, torch.from_numpy(expected[:, 1:]))
