"""`orch spec [SECTION | WORKLOAD]`: every job spec field with its type, default and meaning.

The text comes from the `Field(description=...)` where each field is declared (core/spec.py and each
workload's config), so it cannot drift from what `orch submit` accepts.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.core.errors import OrchError

out = Console(highlight=False, soft_wrap=True)


def field_rows(model: type[BaseModel]) -> list[dict[str, Any]]:
    rows = []
    for name, info in model.model_fields.items():
        if info.default_factory is not None:
            default: Any = info.default_factory()  # type: ignore[call-arg]
        else:
            default = "(required)" if info.default is PydanticUndefined else info.default
        annotation = type_name(info.annotation)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            default, annotation = "(section)", "section"
        rows.append({"field": name, "type": annotation, "default": default, "description": info.description or ""})
    return rows


def type_name(annotation: Any) -> str:
    """`int`, `str | None`, or the choices of a Literal (`fp32 | bf16 | fp16`)."""
    if get_origin(annotation) is Literal:
        return " | ".join(str(choice) for choice in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def documented_sections() -> dict[str, type[BaseModel]]:
    from orchestrator.core.spec import JobSpec
    from orchestrator.workloads import BUILTIN_WORKLOADS

    sections: dict[str, type[BaseModel]] = {"job": JobSpec}
    for name, info in JobSpec.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            sections[name] = info.annotation
    from orchestrator.core.tracking_spec import MlflowSpec

    sections["tracking.mlflow"] = MlflowSpec
    for name, workload in BUILTIN_WORKLOADS.items():
        sections[f"{name}.model"] = workload.model_config
        sections[f"{name}.data"] = workload.data_config
    return sections


def cmd_spec(args: argparse.Namespace) -> int:
    sections = documented_sections()
    wanted = args.section
    if wanted is None:
        chosen = {k: v for k, v in sections.items() if "." not in k}
    elif wanted in sections:
        chosen = {wanted: sections[wanted]}
    elif f"{wanted}.model" in sections:  # a workload: both of its sections
        chosen = {k: v for k, v in sections.items() if k.startswith(f"{wanted}.")}
    else:
        plain = ", ".join(k for k in sections if "." not in k)
        workloads = ", ".join(sorted({k.split(".")[0] for k in sections if "." in k}))
        raise OrchError(f"orch spec: '{wanted}' is neither a spec section nor a built-in workload; choose one of "
                        f"{plain} or {workloads}.")
    docs = {name: field_rows(model) for name, model in chosen.items()}
    if args.json:
        print(json.dumps(docs, indent=2, default=str))
        return 0
    for name, rows in docs.items():
        table = Table("FIELD", "TYPE", "DEFAULT", "MEANING", title=name if name != "job" else "job (top level)",
                      title_justify="left")
        for row in rows:
            table.add_row(row["field"], escape(str(row["type"])), escape(json.dumps(row["default"], default=str)),
                          escape(row["description"]))
        out.print(table)
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("spec", cmd_spec, "Show the job spec's fields: type, default and meaning.")
    p.add_argument("section", nargs="?", help="a section (train, scaling, deepspeed, ...) or a workload (gpt, mlp)")
    p.add_argument("--json", action="store_true")
