"""Byte counts as people read them in tables and messages."""

from __future__ import annotations


def human_size(n: float, decimals: int = 1) -> str:
    """1536 -> '1.5 KiB'; whole bytes below 1 KiB; GiB is the largest unit."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{decimals}f} {unit}"
        n /= 1024
    raise AssertionError("unreachable: the loop returns at GiB")
