"""`orch data prepare`: text, JSONL or Parquet into a prepared token dataset, with a progress bar and a summary."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.control.cli.client import client
from orchestrator.control.cli.plain import plain

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from orchestrator.control.data_prepare import PrepareOptions

    options = PrepareOptions(inputs=tuple(args.inputs), out=args.out, tokenizer=args.tokenizer,
                             vocab_size=args.vocab_size, eos_token=args.eos_token, text_field=args.text_field,
                             shard_tokens=args.shard_tokens, val_fraction=args.val_fraction,
                             unit_bytes=int(args.unit_mb * (1 << 20)))
    bar = Progress(TextColumn("units"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[tokens]} tokens"),
                   TimeElapsedColumn(), console=err, transient=True, disable=args.json)
    task: list[Any] = []

    def show(progress: Any) -> None:
        if not task:
            task.append(bar.add_task("units", total=progress.units_total, tokens=0))
        bar.update(task[0], completed=progress.units_done, tokens=f"{progress.tokens:,}")

    with bar:
        result = client(args).prepare_data(options.inputs, options.out, tokenizer=options.tokenizer,
                                           vocab_size=options.vocab_size, on_progress=show,
                                           eos_token=options.eos_token, text_field=options.text_field,
                                           shard_tokens=options.shard_tokens, val_fraction=options.val_fraction,
                                           unit_bytes=options.unit_bytes)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    if result.units_skipped:
        err.print(f"{result.units_skipped} of {result.units} units were already committed and skipped.")
    table = Table(title=f"Prepared {plain(result.out)}")
    for column in ("shards (train/val)", "tokens train", "tokens val", "dtype", "vocab", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(f"{result.shards} ({result.train_shards}/{result.val_shards})", f"{result.tokens_train:,}",
                  f"{result.tokens_val:,}", result.dtype, f"{result.vocab_size:,}", f"{result.seconds:.1f}")
    out.print(table)
    return 0


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("data", lambda args: args.data_func(args), "Prepare pretraining data (orch data prepare).")
    data = p.add_subparsers(dest="data_command", required=True)
    prepare = data.add_parser("prepare", help="tokenize text into shards a job's data.path can name",
                              description="Tokenize .txt, .jsonl or .parquet inputs (files, folders, s3:// "
                              "prefixes) into token shards plus index.json at --out, as Ray tasks on the cluster.")
    prepare.set_defaults(data_func=cmd_data_prepare)
    # Also accepted after `prepare`; SUPPRESS keeps a value given before it.
    prepare.add_argument("--address", default=argparse.SUPPRESS, help="Ray dashboard address of an existing "
                         "cluster (default: ORCH_RAY_ADDRESS, else the embedded local cluster)")
    prepare.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS)
    prepare.add_argument("inputs", nargs="+", metavar="INPUT")
    prepare.add_argument("--out", required=True, metavar="URI", help="where the dataset goes (s3://... or a path)")
    prepare.add_argument("--tokenizer", metavar="FILE", help="a tokenizer.json to use")
    prepare.add_argument("--vocab-size", type=int, metavar="N", help="train a byte-level BPE of N tokens instead")
    prepare.add_argument("--eos-token", default="<|endoftext|>", help="the token that ends each document "
                         "(default <|endoftext|>)")
    prepare.add_argument("--text-field", default="text", help="JSONL field / Parquet column with the text")
    prepare.add_argument("--shard-tokens", type=int, default=16_777_216, help="tokens per shard (default 16777216)")
    prepare.add_argument("--val-fraction", type=float, default=0.05, help="share of shards held out for "
                         "validation (whole shards; default 0.05)")
    prepare.add_argument("--unit-mb", type=float, default=64.0, help="MiB of a line-based file per work unit "
                         "(default 64)")
    prepare.add_argument("--json", action="store_true", help="print the result as JSON")
