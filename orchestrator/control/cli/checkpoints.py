"""`orch checkpoints | verify | export | predict`: what a finished (or running) job left in storage.

Each also takes a campaign id: it then works on one trial (`--trial`, default the best one), which is stored
like a job under `<campaign storage>/trials/<trial id>/`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.core.errors import OrchError
from orchestrator.core.units import human_size

out = Console(highlight=False, soft_wrap=True)


def _job(args: argparse.Namespace) -> Any:
    """The SDK handle of the job (or campaign) the command names."""
    from orchestrator.control.cli.client import client
    from orchestrator.control.sdk.client import check_trial_id

    check_trial_id(getattr(args, "trial", None), args.job)  # before the lookup: a path is refused whatever the id
    return client(args).job(args.job)


def cmd_checkpoints(args: argparse.Namespace) -> int:
    rows = [c.as_dict() for c in _job(args).checkpoints(trial=args.trial)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table("STEP", "CREATED", "SIZE", "COMMITTED", "VERIFIED", "METRICS")
    for r in rows:
        metrics = "  ".join(f"{k}={_number(v)}" for k, v in sorted(r["metrics"].items())
                            if k in ("loss", "eval_loss", "eval_accuracy"))
        table.add_row(str(r["step"]), r["created"] or "", human_size(r["size_bytes"]), _yes(r["committed"]),
                      _yes(r["verified"]), metrics)
    out.print(table if rows else f"No checkpoints for {args.job} yet.")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    bad = 0
    for result in _job(args).verify(step=args.step, trial=args.trial):
        if result.ok:
            out.print(f"step {result.step}: [green]OK[/] ({result.checked_files} files re-hashed)")
        else:
            bad += 1
            for problem in result.problems:
                out.print(f"step {result.step}: [red]BAD[/] {problem}")
    return 1 if bad else 0


def _number(value: Any) -> str:
    """A manifest's metric as written by anyone with storage access: a number, or shown escaped as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}"
    return escape(repr(value)[:40])


def _load_input(raw: str | None) -> Any:
    if raw is None:
        return None
    import numpy as np

    path = Path(raw)
    if not path.is_file():
        raise OrchError(f"--input {raw} does not exist or is not a file. Give a .npy array of (N, 64) digit "
                        "features (numpy.save).")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise OrchError(f"--input {raw} is not a .npy array ({str(exc)[:120]}). Save the features with numpy.save "
                        "as a (N, 64) array.") from None


def cmd_export(args: argparse.Namespace) -> int:
    from orchestrator.control.export import check_out_path
    from orchestrator.control.hf_export import check_format, check_out_dir, parse_shard_size

    # Before the job is even looked up: a bad --format or --out is the user's first thing to fix.
    fmt = check_format(args.format, args.max_shard_size)
    if fmt == "hf":
        check_out_dir(args.out)
        if args.max_shard_size is not None:
            parse_shard_size(args.max_shard_size)
    else:
        check_out_path(args.out)
    done = _job(args).export(args.out, step=args.step, trial=args.trial, safetensors=args.safetensors,
                             format=fmt, max_shard_size=args.max_shard_size)
    shards = f" in {done.shards} shards" if done.shards > 1 else ""
    out.print(f"Exported step {done.step} of {args.job}: {done.tensors} tensors, {done.parameters:,} parameters"
              f"{shards} -> {done.path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from orchestrator.control.export import choose_step, consolidated_state_dict
    from orchestrator.workloads import BUILTIN_WORKLOADS, load

    features = _load_input(args.input)
    job = _job(args)
    spec, store = job.spec(args.trial), job.store(args.trial)
    workload = BUILTIN_WORKLOADS.get(spec.get("workload", ""))
    if workload is None or workload.predict is None:
        served = ", ".join(name for name, w in BUILTIN_WORKLOADS.items() if w.predict)
        raise OrchError(f"orch predict serves the {served} workload; job {args.job} runs "
                        f"'{spec.get('workload')}'.")
    if args.model:
        state = _load_exported(Path(args.model))
    else:
        state = consolidated_state_dict(store, choose_step(store, args.step))
    try:
        result: dict[str, Any] = {"job": args.job, **load(workload.predict)(spec, state, features)}
    except (ValueError, RuntimeError, TypeError) as exc:  # an --input (or --model) that does not fit the model
        raise OrchError(f"The model of {args.job} cannot classify "
                        f"{'--input ' + args.input if args.input else 'with --model ' + str(args.model)} "
                        f"({str(exc)[:160]}). --input must be a (N, 64) array of raw digit "
                        "features; --model a state dict exported from this job.") from None
    if args.json:
        print(json.dumps(result))
    else:
        if "accuracy" in result:
            out.print(f"validation accuracy: {result['accuracy']:.4f} on {result['n']} digits")
        out.print(f"predictions: {result['predictions'][:20]}{' ...' if result['n'] > 20 else ''}")
    return 0


def _load_exported(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise OrchError(f"--model {path} does not exist. Create it with: orch export JOB --out {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from orchestrator.control import safe_load

    try:
        return safe_load.load_file(path, map_location="cpu")
    except OrchError:
        raise
    except Exception as exc:  # not a torch file at all
        raise OrchError(f"--model {path} is not a state dict saved by orch export ({str(exc)[:120]}).") from None


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def _job_and_trial(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="a job id, or a campaign id (then one of its trials)")
    p.add_argument("--trial", help="for a campaign: the trial id (default: the best trial)")


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("checkpoints", cmd_checkpoints, "List a job's checkpoints.")
    _job_and_trial(p)
    p.add_argument("--json", action="store_true")
    p = add("verify", cmd_verify, "Re-hash every checkpoint file against its manifest; exit 1 on any mismatch.")
    _job_and_trial(p)
    p.add_argument("--step", type=int)
    p = add("export", cmd_export, "Consolidate a ZeRO checkpoint into one fp32 state dict.")
    _job_and_trial(p)
    p.add_argument("--step", type=int, help="default: the newest verified checkpoint")
    p.add_argument("--out", required=True, help="the file to write (--format hf: a new or empty directory)")
    p.add_argument("--format", help="pt (torch.save), safetensors, or hf: a directory transformers loads "
                   "(AutoModelForCausalLM / AutoTokenizer.from_pretrained); default: pt, or safetensors with "
                   "--safetensors")
    p.add_argument("--max-shard-size", metavar="SIZE", help="--format hf: the largest safetensors file (default "
                   "5GB; e.g. 500MB); bigger models are split, with model.safetensors.index.json")
    p.add_argument("--safetensors", action="store_true", help="write safetensors instead of torch.save")
    p = add("predict", cmd_predict, "Classify digits with a trained mlp job's model.")
    _job_and_trial(p)
    p.add_argument("--model", help="an exported state dict (default: the job's newest verified checkpoint)")
    p.add_argument("--step", type=int)
    p.add_argument("--input", help="a .npy array of raw (N, 64) digit features (default: the validation split)")
    p.add_argument("--json", action="store_true")
