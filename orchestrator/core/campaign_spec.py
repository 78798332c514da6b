"""Campaign specs: a base job spec, a search space over its fields, a search algorithm, a scheduler.

A campaign file names (or inlines) an ordinary job spec and lists the job-spec fields to tune by their
dotted path (`train.lr`, `model.hidden_sizes`). Everything that can be checked before a single trial runs
is checked here, at submit: every value a trial can get is put into the base spec and validated by
`orchestrator.core.spec.parse_spec`, so a misspelt key or an impossible value fails with the field named.
Building the Ray Tune objects lives in `orchestrator.runtime.campaign.tuning` (this module stays Ray-free).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.core.errors import SpecError
from orchestrator.core.spec import (
    NAME_PATTERN,
    REDACTED,
    JobSpec,
    apply_overrides,
    format_validation_error,
    parse_spec,
    read_yaml_mapping,
)

# PBT restarts a trial from a better trial's checkpoint with mutated values. Only fields read afresh after
# a restore can change that way: the restored optimizer state brings back its own lr and weight decay, and
# shapes, sharding and the step count must match the checkpoint.
PBT_MUTABLE_PREFIXES = ("train.",)
PBT_MUTABLE_EXTRA = ("model.dropout",)
PBT_FIXED = ("train.lr", "train.weight_decay", "train.steps", "train.seed")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(_Section):
    """One tuned field. `randint` draws from [low, high) like Ray Tune; `grid` tries every value."""

    type: Literal["choice", "uniform", "loguniform", "randint", "grid"]
    values: list[Any] | None = None
    low: int | float | None = None
    high: int | float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"type {self.type} needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError(f"type {self.type} takes 'values', not 'low'/'high'")
            return self
        if self.values is not None:
            raise ValueError(f"type {self.type} takes 'low' and 'high', not 'values' (use type choice for a list)")
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type} needs both 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"'low' ({self.low}) must be a finite number smaller than 'high' ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"type loguniform needs low > 0 (got {self.low}); use uniform for ranges through 0")
        if self.type == "randint" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"type randint needs whole numbers for 'low' and 'high' (got {self.low}, {self.high})")
        return self

    def probe_values(self) -> list[Any]:
        """Values that cover what a trial can get: every listed value, or both ends of a range."""
        if self.values is not None:
            return list(self.values)
        if self.type == "randint":
            return [int(self.low), int(self.high) - 1]
        return [self.low, self.high]


class SearchSpec(_Section):
    algorithm: Literal["random", "grid", "optuna"] = "random"
    seed: int | None = 0


class SchedulerSpec(_Section):
    """Times (grace_period, max_t, perturbation_interval) count training steps, the `step` of each report."""

    type: Literal["fifo", "asha", "hyperband", "pbt"] = "fifo"
    grace_period: int = Field(10, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: the base spec's train.steps")
    brackets: int = Field(1, ge=1)
    perturbation_interval: int | None = Field(None, ge=1, description="default: checkpoint.every_steps")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    hyperparam_mutations: list[str] | None = Field(None, description="default: every non-grid search_space key")

    @model_validator(mode="after")
    def _options_match_type(self) -> SchedulerSpec:
        applies = {
            "grace_period": ("asha", "hyperband"), "reduction_factor": ("asha", "hyperband"), "brackets": ("asha",),
            "max_t": ("asha", "hyperband"), "perturbation_interval": ("pbt",), "quantile_fraction": ("pbt",),
            "resample_probability": ("pbt",), "hyperparam_mutations": ("pbt",),
        }
        for option in sorted(self.model_fields_set):
            if option in applies and self.type not in applies[option]:
                raise ValueError(f"scheduler.{option} applies to {' and '.join(applies[option])}, not to "
                                 f"{self.type}; remove it or change scheduler.type")
        return self


class TrialResources(_Section):
    """Overrides of the base spec's scaling for every trial, and how trials start."""

    num_workers: int | None = Field(None, ge=1)
    cpus_per_worker: float | None = Field(None, gt=0)
    # auto: a trial with one CPU worker trains in its own Tune process (runtime/campaign/inline_trial.py);
    # worker_group: every trial starts a Ray Train worker group, as a job does.
    launch: Literal["auto", "worker_group"] = "auto"


class BudgetSpec(_Section):
    time_s: float | None = Field(None, gt=0, description="stop the whole campaign after this long")
    total_steps: int | None = Field(None, ge=1, description="stop once all trials together trained this many steps")


class CampaignSpec(_Section):
    name: str
    base: str | dict[str, Any]
    overrides: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, ParamSpec] = Field(min_length=1)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    metric: str = "eval_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(8, ge=1, le=10_000, description="grid algorithm: repeats of the grid (default 1)")
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as the cluster fits")
    trial_resources: TrialResources = Field(default_factory=TrialResources)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    storage: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not NAME_PATTERN.match(name) or ".." in name:
            raise ValueError("must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit, "
                             "without '..' (it becomes part of storage keys and Ray job ids)")
        return name

    @field_validator("search_space", "overrides")
    @classmethod
    def _dotted_keys(cls, mapping: dict[str, Any]) -> dict[str, Any]:
        for key in mapping:
            if not key or any(not part for part in key.split(".")):
                raise ValueError(f"key '{key}' must be a dotted job spec path such as train.lr")
        return mapping

    @model_validator(mode="after")
    def _algorithm_fits_space(self) -> CampaignSpec:
        space, algorithm = self.search_space, self.search.algorithm
        if algorithm == "grid":
            for key, param in space.items():
                if param.type not in ("grid", "choice"):
                    raise ValueError(f"search.algorithm grid enumerates values, but search_space '{key}' is "
                                     f"{param.type}; give it type grid with values, or use algorithm random/optuna")
        if algorithm == "optuna":
            for key, param in space.items():
                if param.type == "grid":
                    raise ValueError(f"search_space '{key}': optuna (TPE) cannot grid-search; use type choice, "
                                     "or search.algorithm grid/random")
                if param.values and not all(v is None or isinstance(v, (bool, int, float, str)) for v in param.values):
                    raise ValueError(f"search_space '{key}': optuna (TPE) needs choice values that are numbers, "
                                     "strings or booleans (not lists or mappings); use search.algorithm random")
        if self.scheduler.type == "pbt":
            if algorithm == "optuna":
                raise ValueError("scheduler.type pbt picks new values itself and cannot be combined with "
                                 "search.algorithm optuna; use random")
            for key in self.pbt_mutations():
                if key not in space:
                    raise ValueError(f"scheduler.hyperparam_mutations: '{key}' is not a search_space key")
                if space[key].type == "grid":
                    raise ValueError(f"scheduler.hyperparam_mutations: '{key}' is a grid; PBT mutates sampled "
                                     "values only (use choice, uniform, loguniform or randint)")
                if key in PBT_FIXED or not (key.startswith(PBT_MUTABLE_PREFIXES) or key in PBT_MUTABLE_EXTRA):
                    raise ValueError(
                        f"scheduler.hyperparam_mutations: '{key}' cannot change when PBT restarts a trial from "
                        "another trial's checkpoint (the restored optimizer state, model shapes and sharding win); "
                        "mutate train.* fields such as l2, input_noise or warmup_steps, or model.dropout, and "
                        "tune the others with asha/hyperband"
                    )
            if not self.pbt_mutations():
                raise ValueError("scheduler.type pbt needs at least one non-grid search_space key to mutate")
        if "num_samples" not in self.model_fields_set and algorithm == "grid":
            object.__setattr__(self, "num_samples", 1)  # one pass over the grid unless asked otherwise
        return self

    def pbt_mutations(self) -> list[str]:
        if self.scheduler.hyperparam_mutations is not None:
            return list(self.scheduler.hyperparam_mutations)
        return [k for k, p in self.search_space.items() if p.type != "grid"]

    def trial_count(self) -> int:
        grid = math.prod(len(p.values or ()) for p in self.search_space.values() if p.type == "grid")
        if self.search.algorithm == "grid":
            grid = math.prod(len(p.values or ()) for p in self.search_space.values())
        return grid * self.num_samples


@dataclass(frozen=True)
class Campaign:
    """A validated campaign: its spec and the resolved base job spec every trial starts from."""

    spec: CampaignSpec
    base: dict[str, Any]  # the base job spec as plain data, overrides and trial_resources applied, validated
    max_t: int  # the longest trial, in steps: the schedulers' time horizon
    secrets: dict[str, str] = field(default_factory=dict)  # the base spec's secret env: never stored

    @property
    def base_job(self) -> JobSpec:
        return parse_spec(self.base, source=f"campaign '{self.spec.name}' base job spec")

    @cached_property  # read at every progress write of the campaign driver; it parses the base job spec
    def trials_in_process(self) -> bool:
        """Whether every trial trains in its Tune process instead of a worker group: one CPU worker, and nothing
        in the search space that could change the trials' scaling (Tune's resources are one per campaign)."""
        job = self.base_job
        return (self.spec.trial_resources.launch == "auto" and job.scaling.num_workers == 1
                and not job.scaling.use_gpu and not any(key.startswith("scaling.") for key in self.spec.search_space))

    @property
    def trial_launch(self) -> str:
        """How trials start, as status and the submit message say it: in_process or worker_group."""
        return "in_process" if self.trials_in_process else "worker_group"

    def probe_jobs(self) -> list[JobSpec]:
        """The base job with each search-space value a trial can get (or both ends of each range) set."""
        return [parse_spec(trial_spec_data(self.base, {key: value}),
                           source=f"search_space '{key}' = {value!r} gives a job spec that")
                for key, param in self.spec.search_space.items() for value in param.probe_values()]

    def to_record(self) -> dict[str, Any]:
        """What the campaign record and storage keep: enough to rebuild it without the original files."""
        # Unset fields stay out: re-validating must not see defaults as options the user chose.
        spec = self.spec.model_dump(mode="json", exclude_unset=True)
        if isinstance(self.spec.base, dict):
            spec["base"] = self.base  # an inline base may hold secrets; the resolved one is redacted
        # Every env value set through overrides is hidden: the base (redacted by name and value) shows the others.
        spec["overrides"] = {k: _redact_env(v) if k == "env" else REDACTED if k.startswith("env.") else v
                             for k, v in self.spec.overrides.items()}
        return {"campaign": spec, "base": self.base, "max_t": self.max_t}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Campaign:
        try:
            spec = CampaignSpec(**data["campaign"])
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, "stored campaign spec")) from None
        return cls(spec=spec, base=data["base"], max_t=int(data["max_t"]))


def _redact_env(value: Any) -> Any:
    return {k: REDACTED for k in value} if isinstance(value, dict) else REDACTED


# ---- dotted keys ----------------------------------------------------------------------------------------
def set_dotted(data: dict[str, Any], key: str, value: Any, what: str) -> None:
    """data['a']['b'] = value for key 'a.b', creating sections as needed (in place)."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"{what}: '{part}' is not a section of the job spec, so '{key}' cannot be set. "
                            "Use a dotted path to a field, such as train.lr.")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def trial_spec_data(base: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The job spec of one trial: the base with each `dotted.key: value` of the trial's config set."""
    data = copy.deepcopy(base)
    for key, value in config.items():
        set_dotted(data, key, value, f"search_space '{key}'")
    return data


# ---- loading ----------------------------------------------------------------------------------------------
def load_campaign_file(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> Campaign:
    """Read a campaign YAML, apply `--set` overrides, resolve its base job spec and validate everything."""
    path = Path(path)
    data = apply_campaign_sets(read_yaml_mapping(path), sets)
    return resolve_campaign(data, base_dir=path.parent, source=str(path))


def apply_campaign_sets(data: dict[str, Any], sets: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`--set` for campaigns. Keys under search_space and overrides are themselves dotted paths:
    `search_space.train.lr.high=0.1` sets field `high` of key `train.lr`, `overrides.train.steps=50` sets
    override `train.steps`; any other key is a plain dotted path (`scheduler.type=asha`)."""
    data = apply_overrides(data, [])  # deep copy
    plain = []
    for item in sets:
        key, sep, raw = item.partition("=")
        head, _, rest = key.partition(".")
        if sep and head in ("search_space", "overrides") and rest:
            value = apply_overrides({}, [f"v={raw}"])["v"]  # the same YAML value parsing as everywhere else
            section = data.setdefault(head, {})
            if not isinstance(section, dict):
                raise SpecError(f"--set '{item}': '{head}' is not a mapping in the campaign file.")
            if head == "overrides":
                section[rest] = value
            else:
                param_key, dot, attr = rest.rpartition(".")
                if not dot or not param_key:
                    raise SpecError(f"--set '{item}' must look like search_space.<dotted.key>.<field>=value, "
                                    "for example search_space.train.lr.high=0.1.")
                param = section.setdefault(param_key, {})
                if not isinstance(param, dict):
                    raise SpecError(f"--set '{item}': search_space '{param_key}' is not a mapping.")
                param[attr] = value
        else:
            plain.append(item)
    return apply_overrides(data, plain)


def resolve_campaign(data: dict[str, Any], base_dir: Path, source: str = "campaign spec") -> Campaign:
    try:
        spec = CampaignSpec(**data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    except TypeError as exc:
        raise SpecError(f"{source}: {exc}. Use 'field: value' pairs with string keys.") from None
    base = _base_mapping(spec, base_dir, source)
    for key, value in spec.overrides.items():
        set_dotted(base, key, value, f"{source}: overrides '{key}'")
    resources = spec.trial_resources
    if resources.num_workers is not None:
        set_dotted(base, "scaling.num_workers", resources.num_workers, f"{source}: trial_resources")
    if resources.cpus_per_worker is not None:
        set_dotted(base, "scaling.cpus_per_worker", resources.cpus_per_worker, f"{source}: trial_resources")
    base["name"] = spec.name  # trials are named after their campaign
    if spec.storage is not None:
        base["storage"] = spec.storage
    job = parse_spec(base, source=f"{source}: base job spec (after overrides)")
    secrets, base = job.secret_env(), job.redacted()  # normalised, every default visible, secrets never stored
    campaign = Campaign(spec=spec, base=base, max_t=0, secrets=secrets)
    try:
        probes = campaign.probe_jobs()
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
    steps = [p.train.steps for p in probes] if "train.steps" in spec.search_space else [job.train.steps]
    max_t = spec.scheduler.max_t or max(steps)
    _check_metric_and_scheduler(spec, job, max_t, source)
    return Campaign(spec=spec, base=base, max_t=max_t, secrets=secrets)


def _base_mapping(spec: CampaignSpec, base_dir: Path, source: str) -> dict[str, Any]:
    if isinstance(spec.base, dict):
        return copy.deepcopy(spec.base)
    path = Path(spec.base)
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise SpecError(f"{source}: base job spec '{spec.base}' does not exist (looked for {path}). Give a path "
                        "relative to the campaign file, or put the job spec inline under 'base:'.")
    return read_yaml_mapping(path)


def _check_metric_and_scheduler(spec: CampaignSpec, job: JobSpec, max_t: int, source: str) -> None:
    from orchestrator.workloads import BUILTIN_WORKLOADS

    # A misspelt metric fails at submit instead of leaving every scheduler decision without data.
    workload = BUILTIN_WORKLOADS.get(job.workload)
    reported = workload.metrics if workload is not None else None
    if reported is not None and spec.metric not in reported:
        raise SpecError(f"{source}: metric '{spec.metric}' is not reported by workload {job.workload}; it reports "
                        f"{', '.join(reported)}. Fix 'metric'.")
    if spec.metric.startswith("eval_") and job.train.eval_every == 0 and spec.scheduler.type != "fifo":
        raise SpecError(f"{source}: metric '{spec.metric}' is only measured at the end because the base spec has "
                        f"train.eval_every 0, so scheduler {spec.scheduler.type} has nothing to compare trials "
                        "by. Set overrides 'train.eval_every' (e.g. to train.report_every).")
    sched = spec.scheduler
    if sched.type in ("asha", "hyperband") and sched.grace_period > max_t:
        raise SpecError(f"{source}: scheduler.grace_period ({sched.grace_period}) is longer than the longest trial "
                        f"({max_t} steps); lower it so trials can be compared before they end.")
    if sched.type == "pbt":
        every = job.checkpoint.every_steps
        if every == 0:
            raise SpecError(f"{source}: scheduler.type pbt restarts trials from each other's checkpoints, but the "
                            "base spec has checkpoint.every_steps 0. Set overrides 'checkpoint.every_steps'.")
        interval = sched.perturbation_interval or every
        if interval % every:
            raise SpecError(f"{source}: scheduler.perturbation_interval ({interval}) must be a multiple of "
                            f"checkpoint.every_steps ({every}) so each perturbation has a fresh checkpoint.")
