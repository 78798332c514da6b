"""The held-out validation shards: whole shards, deterministic, at least one of each split."""

from __future__ import annotations

import pytest

from orchestrator.core.errors import OrchError
from orchestrator.core.prepare_plan import val_positions


@pytest.mark.parametrize("count, fraction, expected", [(2, 0.05, 1), (20, 0.05, 1), (100, 0.05, 5), (10, 0.5, 5),
                                                       (3, 0.99, 2), (1000, 0.1, 100)])
def test_val_shards_are_a_rounded_share_never_none_never_all(count: int, fraction: float, expected: int):
    held = val_positions(count, fraction)
    assert len(held) == expected and held <= set(range(count))
    assert held == val_positions(count, fraction)


def test_val_shards_are_spread_over_the_dataset():
    held = sorted(val_positions(100, 0.05))
    assert held[0] < 20 and held[-1] >= 80


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_shards_says_to_lower_shard_tokens(count: int):
    with pytest.raises(OrchError, match="--shard-tokens"):
        val_positions(count, 0.05)
