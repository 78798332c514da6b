"""`orch export --format hf`: a directory transformers loads with no code of ours.

    config.json, generation_config.json           the transformers config the workload's plan gives
    model.safetensors | model-0000i-of-0000n.safetensors + model.safetensors.index.json (above max_shard_size)
    tokenizer.json, tokenizer_config.json, ...    the job's tokenizer (hf_tokenizer.py)

Tensors are produced from the (lazy) consolidated state one at a time as their shard is written, so the model is
never held in memory whole.
Everything is written to DIR.partial and renamed to DIR at the end: DIR exists only complete.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import OrchError

DEFAULT_MAX_SHARD_SIZE = "5GB"
INDEX_NAME = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclass(frozen=True)
class HFExport:
    path: str
    tensors: int
    parameters: int
    shards: int


def parse_shard_size(raw: str | int) -> int:
    """--max-shard-size: bytes, or a number with a unit as transformers spells it (5GB, 500MB, 2GiB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(raw), flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise OrchError(f"--max-shard-size {str(raw)[:40]!r} is not a size. Give bytes or a number with a unit, "
                        "e.g. --max-shard-size 5GB or 500MB.")
    return max(1, int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()]))


EXPORT_FORMATS = ("pt", "safetensors", "hf")


def check_format(fmt: str | None, max_shard_size: str | int | None = None) -> str | None:
    """--format (None: the file's suffix decides, as before --format existed) and whether --max-shard-size fits it."""
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise OrchError(f"--format {fmt[:40]!r} is not an export format. Give pt (torch.save), safetensors, or hf "
                        "(a directory transformers loads: config, weights, tokenizer).")
    if max_shard_size is not None and fmt != "hf":
        raise OrchError("--max-shard-size splits the weights of --format hf; add --format hf, or drop it.")
    return fmt


def check_out_dir(raw: str) -> Path:
    """--out for --format hf: a new or empty directory, checked before any work."""
    if not raw.strip():
        raise OrchError("--out is empty. Give the directory to write, e.g. --out my-model.")
    path = Path(raw)
    if path.exists() and not path.is_dir():
        raise OrchError(f"--out {raw} exists and is not a directory; --format hf writes a directory. Give a new "
                        "directory path (it is created).")
    if path.is_dir() and any(path.iterdir()):
        raise OrchError(f"--out {raw} is a directory that is not empty; it is left alone. Give a new or empty "
                        "directory.")
    return path


def hf_plan_for(spec: dict[str, Any], state_keys: set[str], eos_id: int | None) -> Any:
    """The workload's plan (config + tensor names), or why this job has no Hugging Face form."""
    from orchestrator.workloads import BUILTIN_WORKLOADS, load
    from orchestrator.workloads.hf_plan import HFExportError

    name = str(spec.get("workload", ""))
    workload = BUILTIN_WORKLOADS.get(name)
    if workload is None or workload.hf_export is None:
        served = ", ".join(n for n, w in BUILTIN_WORKLOADS.items() if w.hf_export)
        raise OrchError(f"--format hf writes causal language models ({served} workloads); this job runs the "
                        f"'{name[:60]}' workload. Export it with --format pt or --format safetensors.")
    try:
        return load(workload.hf_export)(spec, state_keys, eos_id)
    except HFExportError as exc:
        raise OrchError(str(exc)) from None


def check_exportable(spec: dict[str, Any]) -> None:
    """Refuse a job with no Hugging Face form before its checkpoint is fetched."""
    hf_plan_for(spec, set(), None)


def export_hf(spec: dict[str, Any], state: dict[str, Any], out: Path,
              max_shard_size: int = parse_shard_size(DEFAULT_MAX_SHARD_SIZE)) -> HFExport:
    """Write the HF directory from a consolidated state dict (tensors or LazyTensors). Consumes `state`."""
    from orchestrator.control.hf_tokenizer import save_tokenizer, tokenizer_for

    tokenizer = tokenizer_for(spec)
    plan = hf_plan_for(spec, set(state), tokenizer.eos_id)
    _check_against_model(plan)
    absent = [t.source for t in plan.tensors if t.source not in state]
    if absent:
        raise OrchError(f"The checkpoint has no tensor {', '.join(absent[:4])}: it is not the model the job's spec "
                        "describes. Export it with --format pt.")
    tmp = out.with_name(out.name + ".partial")
    try:
        if tmp.is_dir():
            shutil.rmtree(tmp)  # left by an export that was stopped: ours, and never complete
        tmp.mkdir(parents=True)
        plan.config.save_pretrained(str(tmp))
        _generation_config(plan.config).save_pretrained(str(tmp))
        save_tokenizer(tokenizer, tmp, int(plan.config.max_position_embeddings))
        shards, parameters = _write_weights(plan, state, tmp, max_shard_size)
        if out.is_dir():
            out.rmdir()  # empty (checked): the rename below needs the name free
        tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OrchError(f"--out {out} cannot be written ({exc.strerror or exc}). Give a path in a directory you "
                        "can write.") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a refusal (or Ctrl-C) leaves nothing behind
        raise
    return HFExport(str(out), len(plan.tensors), parameters, shards)


def export_stored_run(store: Any, spec: dict[str, Any], path: str, step: int | None,
                      max_shard_size: str | int | None) -> tuple[HFExport, int]:
    """A job's (or trial's) checkpoint in `store` -> an HF directory at `path`; the export and the step used.

    Every check that needs no download (the directory, the shard size, the workload) comes first."""
    from orchestrator.control.export import choose_step, open_consolidated

    out = check_out_dir(path)
    size = parse_shard_size(DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else max_shard_size)
    check_exportable(spec)  # an mlp job, or a config with no transformers equivalent: before any download
    chosen = choose_step(store, step)
    with open_consolidated(store, chosen) as state:  # streamed: tensors are produced as their shard is written
        return export_hf(spec, state, out, size), chosen


def _generation_config(config: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                            pad_token_id=config.pad_token_id)


def _check_against_model(plan: Any) -> None:
    """The plan names exactly the transformers model's tensors (tied ones once): checked on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(plan.config)
    wanted = set(model.state_dict())
    if plan.config.tie_word_embeddings:
        tied = getattr(model, "_tied_weights_keys", None) or {}
        wanted -= set(tied)
    named = {t.name for t in plan.tensors}
    if named != wanted:
        raise OrchError(f"Export plan and {type(model).__name__} disagree: missing {sorted(wanted - named)[:4]}, "
                        f"extra {sorted(named - wanted)[:4]}. This is a bug in the workload's export mapping.")


def _write_weights(plan: Any, state: dict[str, Any], out: Path, max_shard_size: int) -> tuple[int, int]:
    """safetensors shards of at most max_shard_size bytes (a bigger tensor gets a shard of its own), HF names.

    Shards are planned from shapes alone, then streamed: one tensor is produced, written and dropped at a time."""
    from orchestrator.control.safetensors_stream import tensor_entry, write_file

    groups: list[list[Any]] = [[]]
    size = 0
    for t in plan.tensors:
        nbytes = state[t.source].numel() * state[t.source].element_size()
        if groups[-1] and size + nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += nbytes
    names = ["model.safetensors"] if len(groups) == 1 else \
        [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map, total, parameters = {}, 0, 0
    for name, group in zip(names, groups, strict=True):
        entries = [tensor_entry(t.name, state.pop(t.source), t.transpose) for t in group]
        total += write_file(out / name, entries, metadata={"format": "pt"})
        for t, entry in zip(group, entries, strict=True):
            weight_map[t.name] = name
            parameters += math.prod(entry.shape)
        del entries  # a tensor given as a real one (not lazy) is released with its shard
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return len(names), parameters
