"""`orch generate JOB|DIR --prompt TEXT`: text from a job's model or a Hugging Face export, via transformers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from orchestrator.core.errors import NotFoundError, OrchError


def cmd_generate(args: argparse.Namespace) -> int:
    from orchestrator.control.generate import check_model_dir, check_sampling
    from orchestrator.control.sdk import generate_from_dir

    check_sampling(args.prompt, args.max_new_tokens, args.temperature, args.top_k)
    sampling = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
                "seed": args.seed}
    if Path(args.model).is_dir():  # an export: the job options do not apply
        if args.step is not None or args.trial is not None:
            raise OrchError(f"--step and --trial choose a job's checkpoint; {args.model} is an exported model "
                            "directory. Drop them.")
        done = generate_from_dir(check_model_dir(args.model), args.prompt, **sampling)
    else:
        done = _job(args).generate(args.prompt, step=args.step, trial=args.trial, **sampling)
    if args.json:
        print(json.dumps(done.as_dict()))
    else:
        print(done.text)  # plain print: model text is not rich markup
    return 0


def _job(args: argparse.Namespace) -> object:
    from orchestrator.control.cli.client import client
    from orchestrator.control.sdk.client import check_trial_id

    check_trial_id(args.trial, args.model)
    try:
        return client(args).job(args.model)
    except NotFoundError:
        raise NotFoundError(f"{args.model[:200]} is neither a job id nor a model directory. Give a job id (see orch "
                            "list) or a directory written by `orch export JOB --format hf --out DIR`.") from None


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("generate", cmd_generate, "Continue a prompt with a job's model or a Hugging Face export (transformers).")
    p.add_argument("model", metavar="JOB|DIR", help="a job id (its checkpoint is exported first) or a directory "
                   "written by orch export --format hf")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="tokens to add (default: 50, or what the "
                   "model's context leaves)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; default 1")
    p.add_argument("--top-k", type=int, metavar="K", help="sample only from the K likeliest tokens (default: all)")
    p.add_argument("--seed", type=int, help="makes sampling reproducible")
    p.add_argument("--step", type=int, help="a job: the checkpoint (default: the newest verified one)")
    p.add_argument("--trial", help="a campaign: the trial (default: the best one)")
    p.add_argument("--json", action="store_true", help="print {prompt, text, tokens}")
