"""Value checks the spec's sections share: plain counts, finite numbers in free-form sections."""

from __future__ import annotations

import math
from types import UnionType
from typing import Any, Union, get_args, get_origin

MAX_INT = 2**53  # larger counts are never meant, and JSON readers lose precision past it


def is_int_field(annotation: Any) -> bool:
    return annotation is int or (get_origin(annotation) in (Union, UnionType) and int in get_args(annotation))


def check_finite(value: Any, where: str) -> None:
    """DeepSpeed's config is JSON: NaN/inf and numbers past JSON's exact range are always mistakes."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{str(key)[:80]}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite(item, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}; it must be a finite number")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ValueError(f"{where} is a {len(str(abs(value)))}-digit number; it must be less than or equal to "
                         f"{MAX_INT}")
