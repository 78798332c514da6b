"""Specs for the SDK: a YAML path, a mapping or an already validated spec, plus `overrides` as a dict.

Overrides are the CLI's `--set key=value` pairs; a dict's values are written as JSON (valid YAML), so
`{"train.lr": 0.01, "name": "run-1"}` means exactly what `--set train.lr=0.01 --set name=run-1` means.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.core.campaign_spec import Campaign
from orchestrator.core.errors import SpecError
from orchestrator.core.spec import JobSpec

SpecSource = str | os.PathLike | Mapping[str, Any] | JobSpec
Overrides = Mapping[str, Any] | Sequence[str] | None


def override_pairs(overrides: Overrides) -> list[str]:
    """`key=value` strings, as `--set` takes them."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        pairs = []
        for key, value in overrides.items():
            if not isinstance(key, str):
                raise SpecError(f"overrides: key {key!r} must be a dotted field path such as 'train.lr'.")
            try:
                pairs.append(f"{key}={json.dumps(value)}")
            except TypeError:
                raise SpecError(f"overrides: the value of '{key}' ({type(value).__name__}) is not plain data; "
                                "use numbers, strings, booleans, lists or dicts.") from None
        return pairs
    if isinstance(overrides, str) or not all(isinstance(item, str) for item in overrides):
        raise SpecError("overrides must be a dict of dotted paths to values ({'train.lr': 0.01}) or a list of "
                        "'key=value' strings.")
    return list(overrides)


def load_job_spec(source: SpecSource, overrides: Overrides = None) -> JobSpec:
    from orchestrator.core.spec import load_spec_file, parse_spec

    sets = override_pairs(overrides)
    if isinstance(source, JobSpec):
        return parse_spec(source.model_dump(mode="json"), sets, source="spec") if sets else source
    if isinstance(source, Mapping):
        return parse_spec(dict(source), sets, source="spec")
    if isinstance(source, (str, os.PathLike)):
        return load_spec_file(source, sets)
    raise SpecError(f"spec must be a path to a YAML file, a mapping or a JobSpec, not {type(source).__name__}.")


def load_campaign(source: str | os.PathLike | Mapping[str, Any], overrides: Overrides = None,
                  base_dir: str | os.PathLike | None = None) -> Campaign:
    """A campaign spec from a YAML path or a mapping; a mapping's relative `base` is resolved against
    `base_dir` (default: the current directory)."""
    from orchestrator.core.campaign_spec import apply_campaign_sets, load_campaign_file, resolve_campaign

    sets = override_pairs(overrides)
    if isinstance(source, Mapping):
        data = apply_campaign_sets(dict(source), sets)
        return resolve_campaign(data, base_dir=Path(base_dir or Path.cwd()), source="campaign spec")
    if isinstance(source, (str, os.PathLike)):
        return load_campaign_file(source, sets)
    raise SpecError(f"campaign spec must be a path to a YAML file or a mapping, not {type(source).__name__}.")
