"""Specs for the SDK: a YAML path, a mapping or an already validated spec, plus `overrides` as a dict.

Overrides are the CLI's `--set key=value` pairs; a dict's values are written as JSON (valid YAML), so
`{"train.lr": 0.01, "name": "run-1"}` means exactly what `--set train.lr=0.01 --set name=run-1` means.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.core.campaign_spec import Campaign
from orchestrator.core.errors import SpecError
from orchestrator.core.spec import JobSpec
from orchestrator.core.tracking_spec import DEFAULT_EXPERIMENT, MLFLOW_URI_ENV

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
        spec = parse_spec(source.model_dump(mode="json"), sets, source="spec") if sets else source
    elif isinstance(source, Mapping):
        spec = parse_spec(dict(source), sets, source="spec")
    elif isinstance(source, (str, os.PathLike)):
        spec = load_spec_file(source, sets)
    else:
        raise SpecError(f"spec must be a path to a YAML file, a mapping or a JobSpec, not {type(source).__name__}.")
    uri = tracking_uri(spec.tracking.mlflow is not None, spec.tracking.mlflow.uri if spec.tracking.mlflow else None)
    if uri is None or (spec.tracking.mlflow is not None and spec.tracking.mlflow.uri == uri):
        return spec
    data = spec.model_dump(mode="json")
    data["tracking"] = {"mlflow": {**(data["tracking"].get("mlflow") or {}), "uri": uri}}
    return parse_spec(data, source="spec")


def tracking_uri(configured: bool, uri: str | None) -> str | None:
    """The MLflow URI a new run is tracked at: the spec's, else MLFLOW_TRACKING_URI of this shell (stored in the
    spec, so the driver gets it wherever it runs); None when neither asks for tracking."""
    if uri:
        return uri
    env_uri = os.environ.get(MLFLOW_URI_ENV, "").strip()
    if configured and not env_uri:
        raise SpecError("field 'tracking.mlflow.uri' is not set and MLFLOW_TRACKING_URI is empty; set one of them "
                        "to your MLflow tracking server (for example http://127.0.0.1:5000), or remove "
                        "tracking.mlflow.")
    return env_uri or None


def load_campaign(source: str | os.PathLike | Mapping[str, Any], overrides: Overrides = None,
                  base_dir: str | os.PathLike | None = None) -> Campaign:
    """A campaign spec from a YAML path or a mapping; a mapping's relative `base` is resolved against
    `base_dir` (default: the current directory)."""
    from orchestrator.core.campaign_spec import apply_campaign_sets, load_campaign_file, resolve_campaign

    sets = override_pairs(overrides)
    if isinstance(source, Mapping):
        data = apply_campaign_sets(dict(source), sets)
        campaign = resolve_campaign(data, base_dir=Path(base_dir or Path.cwd()), source="campaign spec")
    elif isinstance(source, (str, os.PathLike)):
        campaign = load_campaign_file(source, sets)
    else:
        raise SpecError(f"campaign spec must be a path to a YAML file or a mapping, not {type(source).__name__}.")
    mlflow = (campaign.base.get("tracking") or {}).get("mlflow")
    uri = tracking_uri(mlflow is not None, (mlflow or {}).get("uri"))
    if uri is None or (mlflow or {}).get("uri") == uri:
        return campaign
    tracking = {"mlflow": {**(mlflow or {"experiment": DEFAULT_EXPERIMENT}), "uri": uri}}
    return replace(campaign, base={**campaign.base, "tracking": tracking})
