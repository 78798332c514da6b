"""Job specs: YAML in, validated typed objects out, one clear error per mistake.

Every section is a small frozen pydantic model that forbids unknown fields. The workload's own
`model` and `data` sections are validated by the workload's config classes (see `orchestrator/workloads/__init__.py`),
so a typo such as `model.n_layers` is caught at submit time, not an hour into the run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.core import safe_yaml
from orchestrator.core.errors import SpecError
from orchestrator.core.spec_values import (  # noqa: F401 - ENV_NAME_/SECRET_NAME_PATTERN are this module's API
    ENV_NAME_PATTERN,
    MAX_INT,
    SECRET_NAME_PATTERN,
    check_env,
    check_finite,
    check_public_env,
    is_int_field,
    is_secret,
    masked_set,
)
from orchestrator.core.tracking_spec import TrackingSpec

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
ENTRYPOINT_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
REDACTED = "***redacted***"
# Fields whose values are never echoed in error messages: env holds secrets, storage and tracker URIs credentials.
UNECHOED_FIELDS = ("env", "public_env", "storage", "tracking")
# Sections of the derived DeepSpeed config that a raw `deepspeed.config` may only replace with a mapping.
RAW_DEEPSPEED_SECTIONS = ("zero_optimization", "bf16", "fp16")


class _Section(BaseModel):
    # No inf/NaN: they are never meaningful here, and JSON (records, results) cannot hold them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_counts(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic takes true/false as 1/0, and Python ints have no size limit; neither is a meaningful count.
        field = cls.model_fields.get(info.field_name or "")
        if field is None or not is_int_field(field.annotation):
            return value
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not a boolean (true/false)")
        # A float counts too: pydantic takes a whole float (9007199254740994.0) as that int.
        if isinstance(value, (int, float)) and abs(value) > MAX_INT:
            raise ValueError(f"must be less than or equal to {MAX_INT}")
        return value


class ScalingSpec(_Section):
    num_workers: int = Field(2, ge=1, le=4096, description="Ray Train workers (data-parallel ranks)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per worker; 0 with use_gpu means 1")
    use_gpu: bool = Field(False, description="train on GPUs (NCCL); CPU workers use gloo")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="PACK keeps workers together; SPREAD / STRICT_SPREAD put them on different nodes")

    @model_validator(mode="after")
    def _gpus_match_use_gpu(self) -> ScalingSpec:
        if self.gpus_per_worker > 0 and not self.use_gpu:
            raise ValueError("gpus_per_worker > 0 needs use_gpu: true (or set gpus_per_worker: 0)")
        return self

    @property
    def worker_gpus(self) -> float:
        return (self.gpus_per_worker or 1.0) if self.use_gpu else 0.0


class DeepSpeedSpec(_Section):
    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage: 0 none, 1 optimizer, 2 + gradients, 3 + params")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="training precision")
    micro_batch_size: int = Field(8, ge=1, description="samples per worker per forward pass")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro batches per optimizer step")
    global_batch_size: int | None = Field(
        None, ge=1, description="optional check: must equal micro_batch_size x accumulation x num_workers")
    gradient_clipping: float = Field(1.0, ge=0, description="max global gradient norm; 0 turns clipping off")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer states in host memory (stage >= 1)")
    offload_param: bool = Field(False, description="ZeRO-3 parameter shards in host memory")
    activation_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    config: dict[str, Any] = Field(default_factory=dict,
                                   description="raw DeepSpeed config merged over the derived one (expert escape hatch)")

    @field_validator("config")
    @classmethod
    def _finite_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        check_finite(config, "deepspeed.config")
        return config

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> DeepSpeedSpec:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3 (ZeRO-Offload partitions the optimizer)")
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage 3 (only ZeRO-3 partitions parameters)")
        return self


class TrainSpec(_Section):
    steps: int = Field(100, ge=1, description="optimizer steps to train")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("cosine", description="decay after warm-up")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    seed: int = Field(0, ge=-(2**63), le=2**64 - 1,  # what torch.manual_seed takes
                      description="seeds init, data order and noise; resume restores RNG state")
    eval_every: int = Field(0, ge=0, description="0: evaluate only at the end")
    eval_batches: int = Field(4, ge=1, description="validation batches per evaluation")
    report_every: int = Field(10, ge=1, description="steps between metric reports")
    l1: float = Field(0.0, ge=0, description="L1 penalty weight on the parameters")
    l2: float = Field(0.0, ge=0, description="L2 penalty weight on the parameters (in the loss)")
    input_noise: float = Field(0.0, ge=0, description="std of Gaussian noise added to inputs in training")

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSpec:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) is larger than steps ({self.steps})")
        return self


class CheckpointSpec(_Section):
    every_steps: int = Field(0, ge=0, description="steps between checkpoints; 0: only at the end")
    at_end: bool = Field(True, description="checkpoint after the last step")
    keep_latest: int = Field(2, ge=0, description="newest committed checkpoints kept; 0: keep all")
    keep_best: int = Field(0, ge=0, description="best checkpoints by metric kept besides the latest")
    metric: str = Field("eval_loss", description="metric that ranks checkpoints for keep_best")
    mode: Literal["min", "max"] = Field("min", description="whether a lower or higher metric is better")
    async_upload: bool = Field(True, description="upload in the background; training waits only for the local save")


class FailureSpec(_Section):
    max_restarts: int = Field(1, ge=0, le=100, description="worker-group restarts (and driver resubmissions)")


class JobSpec(_Section):
    name: str = Field(description="letters, digits, - _ . (part of storage keys and Ray job ids)")
    workload: str = Field(description="built-in (gpt, llama, mlp) or module:function of your code (with working_dir)")
    working_dir: str | None = Field(None, description="directory of your code, shipped to the cluster by Ray")
    model: dict[str, Any] = Field(default_factory=dict, description="the workload's model section (orch spec WORKLOAD)")
    data: dict[str, Any] = Field(default_factory=dict, description="the workload's data section (orch spec WORKLOAD)")
    train: TrainSpec = Field(default_factory=TrainSpec, description="steps, learning rate, regularisation, eval")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="workers and their resources")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="ZeRO stage, precision, batch")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="when to save, what to keep")
    failure: FailureSpec = Field(default_factory=FailureSpec, description="how many failures to survive")
    storage: str | None = Field(None, description="s3://bucket/prefix, file:// or a path; default ~/.orch/storage")
    env: dict[str, str] = Field(default_factory=dict, description="worker environment, all secret: reaches the "
                                "workers through a 0600 file, never stored or shown")
    public_env: dict[str, str] = Field(default_factory=dict, description="worker environment that may be shown: "
                                       "kept in the stored spec, jobs.db and Ray's job settings")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec,
                                   description="experiment tracker the run is mirrored to (MLflow)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not NAME_PATTERN.match(name) or ".." in name:
            raise ValueError(
                "must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit, without '..' "
                "(it becomes part of storage keys and Ray job ids)"
            )
        return name

    @field_validator("workload")
    @classmethod
    def _known_workload(cls, workload: str) -> str:
        from orchestrator.workloads import BUILTIN_WORKLOADS

        if workload not in BUILTIN_WORKLOADS and not ENTRYPOINT_PATTERN.match(workload):
            raise ValueError(
                f"'{_one_line(workload)}' is neither a built-in workload ({', '.join(sorted(BUILTIN_WORKLOADS))}) nor "
                "'module:function' of your own code"
            )
        return workload

    @field_validator("env")
    @classmethod
    def _valid_env(cls, env: dict[str, str]) -> dict[str, str]:
        check_env(env, "env")
        return env

    @field_validator("storage")
    @classmethod
    def _storage_without_credentials(cls, storage: str | None) -> str | None:
        if storage is not None and re.match(r"^[a-z0-9]+://[^/]*@", storage):
            raise ValueError("must not carry credentials; use the standard AWS settings (env, profile) instead")
        if storage is not None and not re.match(r"^(s3://[a-z0-9][a-z0-9.-]{1,62}[a-z0-9](/.*)?|file:///.*|[^:]+)$",
                                                storage):
            raise ValueError("must be s3://bucket/prefix, file:///absolute/path or a local path")
        return storage

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        from orchestrator.workloads import BUILTIN_WORKLOADS

        check_public_env(self.public_env, self.env)
        for key, value in self.data.items():
            if isinstance(value, str) and re.match(r"^[a-z0-9+]+://[^/]*@", value):
                raise ValueError(f"data.{key} must not carry credentials; use the standard AWS settings (env, "
                                 "profile) instead")
        workload = BUILTIN_WORKLOADS.get(self.workload)
        if workload is not None:
            # Normalise the workload sections so stored specs show every default that was used.
            object.__setattr__(self, "model", _validate_section("model", workload, workload.model_config, self.model))
            object.__setattr__(self, "data", _validate_section("data", workload, workload.data_config, self.data))
        ds = self.deepspeed
        if ds.global_batch_size is not None:
            per_step = ds.micro_batch_size * ds.gradient_accumulation_steps * self.scaling.num_workers
            if ds.global_batch_size != per_step:
                raise ValueError(
                    f"deepspeed.global_batch_size ({ds.global_batch_size}) must equal micro_batch_size "
                    f"({ds.micro_batch_size}) x gradient_accumulation_steps ({ds.gradient_accumulation_steps}) "
                    f"x scaling.num_workers ({self.scaling.num_workers}) = {per_step}"
                )
        if ds.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("deepspeed.precision fp16 needs a GPU (scaling.use_gpu: true); on CPU use bf16 or fp32")
        if (self.train.l1 or self.train.l2) and ds.zero_stage == 3:
            raise ValueError(
                "train.l1/train.l2 penalties need whole parameters, but zero_stage 3 shards them; use zero_stage "
                "0-2, or train.weight_decay for decoupled L2"
            )
        _check_raw_deepspeed(self)
        return self

    def storage_uri(self, default: str) -> str:
        return self.storage or default

    def redacted(self) -> dict[str, Any]:
        """The spec as plain data with every env value replaced (public_env is shown): what we store and show."""
        data = self.model_dump(mode="json")
        data["env"] = dict.fromkeys(self.env, REDACTED)
        return data

    def secret_env(self) -> dict[str, str]:
        """Every env value is secret: it reaches the workers only through the secrets file."""
        return dict(self.env)

    def spec_hash(self) -> str:
        canonical = json.dumps(self.redacted(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _validate_section(section: str, workload: Any, config_cls: type[BaseModel], values: dict[str, Any]
                      ) -> dict[str, Any]:
    try:
        return config_cls.model_validate(values).model_dump(mode="json")
    except ValidationError as exc:
        # Re-raise with the section prefixed so the message names e.g. 'model.n_layer'.
        first = exc.errors()[0]
        loc = _one_line(".".join(str(p) for p in (section, *first["loc"])))
        if first["type"] == "extra_forbidden":
            known = ", ".join(config_cls.model_fields)
            msg = (f"is not a known field of the {workload.name} workload's {section} section; remove it or check "
                   f"its spelling (known fields: {known})")
        elif first["type"] == "missing":
            msg = "is required; add it to the spec"
        else:
            msg = first["msg"].removeprefix("Value error, ")
            if not isinstance(first.get("input"), (dict, list)) and not is_secret("", str(first.get("input"))):
                msg += f" (got {first.get('input')!r})"
        raise ValueError(f"field '{loc}': {msg}") from None


def _check_raw_deepspeed(spec: JobSpec) -> None:
    """DeepSpeed asserts on a bad raw `deepspeed.config` deep inside the workers; refuse it at submit time."""
    from orchestrator.core.deepspeed_config import build_deepspeed_config  # lazily: it needs a built spec

    raw = spec.deepspeed.config
    for section in RAW_DEEPSPEED_SECTIONS:
        if section in raw and not isinstance(raw[section], dict):
            raise ValueError(f"deepspeed.config.{section} must be a mapping (got {raw[section]!r}); write it as "
                             f"{section}: {{...}}, or remove it and use the deepspeed.* fields")
    try:
        merged = build_deepspeed_config(spec)
    except SpecError as exc:
        raise ValueError(str(exc).rstrip(".")) from None
    if merged["fp16"].get("enabled") and not spec.scaling.use_gpu:
        raise ValueError("deepspeed.config.fp16.enabled needs a GPU (scaling.use_gpu: true); on CPU remove it and "
                         "use deepspeed.precision bf16 or fp32")


def load_spec_file(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read a YAML spec, apply `--set key=value` overrides and validate it."""
    return parse_spec(read_yaml_mapping(path), overrides, source=str(path))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"Spec file '{path}' does not exist. Check the path (example specs are in jobs/examples/).")
    if not path.is_file():  # a directory, FIFO or device: reading it could block or never end
        raise SpecError(f"Spec file '{path}' is not a regular file (a directory, pipe or device?). Give the path "
                        "of a YAML file (example specs are in jobs/examples/).")
    try:
        if path.stat().st_size > safe_yaml.MAX_SPEC_BYTES:
            raise SpecError(f"Spec file '{path}' is {path.stat().st_size} bytes, more than the "
                            f"{safe_yaml.MAX_SPEC_BYTES} a spec may have. Check that it is the right file.")
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"Spec file '{path}' cannot be read ({exc.strerror}). Check its permissions.") from None
    except UnicodeDecodeError:
        raise SpecError(f"Spec file '{path}' is not UTF-8 text. Save it as UTF-8 YAML.") from None
    try:
        data = safe_yaml.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"Spec file '{path}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}. "
                        "Fix the syntax (indentation, quotes, colons) and submit again.") from None
    except RecursionError:
        raise SpecError(f"Spec file '{path}' is nested too deeply to be a job spec. Check its structure.") from None
    if not isinstance(data, dict):
        found = "is empty" if data is None else f"holds a {type(data).__name__}"
        raise SpecError(f"Spec file '{path}' {found}; it must hold a YAML mapping (name: ..., workload: ...). "
                        "See jobs/examples/ for valid specs.")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`--set a.b.c=value`: value parsed as a YAML scalar/flow value, path created as needed."""
    if not isinstance(data, dict):
        raise SpecError(f"A job spec must be a mapping (name: ..., workload: ...), not {type(data).__name__}.")
    try:
        data = json.loads(json.dumps(data, default=str))  # deep copy; YAML dates etc. become strings
    except TypeError:  # a key JSON cannot hold, e.g. a YAML date used as a key
        raise SpecError("A job spec's keys must be field names (strings); check for a key that is a date, a "
                        "list or a mapping.") from None
    except (RecursionError, ValueError):
        raise SpecError("A job spec is nested too deeply (or refers to itself). Check its structure.") from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise SpecError(f"--set '{_one_line(masked_set(item))}' must look like key.path=value (for example "
                            "scaling.num_workers=2).")
        try:
            value = safe_yaml.load(raw, "--set value") if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set '{_one_line(masked_set(item))}': '{_one_line(part)}' is not a section, so "
                                f"'{_one_line(key)}' cannot be set.")
            node = child
        node[parts[-1]] = value
    return data


def parse_spec(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "spec") -> JobSpec:
    data = apply_overrides(data, overrides)
    try:
        return JobSpec(**data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    except TypeError as exc:  # e.g. a non-string key at the top level
        raise SpecError(f"{source}: {exc}. Use 'field: value' pairs with string keys.") from None


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = _one_line(".".join(str(p) for p in err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "is not a known field; remove it or check its spelling (see jobs/examples/ for valid specs)"
        elif err["type"] == "missing":
            msg = "is required; add it to the spec"
        elif ("input" in err and loc.split(".")[0] not in UNECHOED_FIELDS and not isinstance(err["input"], (dict, list))
              and not is_secret("", str(err["input"]))):
            msg = f"{msg} (got {err['input']!r})"
        # A cross-field error already names its fields; a field error gets the field name first.
        lines.append(f"field '{loc}': {msg}" if loc else msg)
    return f"{source} is invalid: " + "; ".join(lines) + "."


def _one_line(text: str) -> str:
    """User text inside an error message, with newlines and other control characters escaped."""
    return text if text.isprintable() else repr(text)[1:-1]
