"""Checkpoints to S3, on a disk-backed S3 server process (s3rver, tests/disk_s3.py): training stall per checkpoint
with background vs synchronous upload (same model, same server), and upload throughput of our S3 store's
`put_file` vs plain boto3 `upload_file` with the same TransferConfig, on a checkpoint-sized file; then the same
upload at larger parts and more threads, to see what the store's TransferConfig should be.

    python -m bench.run --only checkpoint
    python -m bench.bench_checkpoint --file-gib 0.25 --repeats 1 --no-stall          # a quick check
    python -m bench.bench_checkpoint --no-throughput --stall-spec jobs/examples/gpt-1b-zero3.yaml \\
        --stall-set train.steps=20 --memory-per-worker 10                                  # stall at 1B
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from bench.common import Bench

MiB, GiB = 2**20, 2**30
BUCKET = "bench"
STALL_SPEC = "jobs/examples/gpt-zero3.yaml"
STALL_GPT = ("model.n_layer=4", "model.d_model=256", "model.n_head=8", "model.seq_len=64")
CKPT_RUN = ("train.steps=40", "train.eval_every=0", "checkpoint.every_steps=10", "checkpoint.keep_latest=0",
            "scaling.num_workers=2", "deepspeed.zero_stage=3", "train.report_every=10")
FILE_BYTES = 2 * GiB  # a checkpoint shard of a ~1B model is several GB; one file of this size stands in for it
WRITE_CHUNK = 64 * MiB  # the file is written in chunks, never held whole in memory
REPEATS = 3
SWEEP = ((8, 8), (16, 8), (32, 8), (64, 8))  # (part MiB, threads) tried beside the store's own config


@dataclass
class Settings:
    file_bytes: int = FILE_BYTES
    repeats: int = REPEATS
    sweep: tuple[tuple[int, int], ...] = SWEEP
    stall: bool = True
    throughput: bool = True
    stall_spec: str = STALL_SPEC
    stall_sets: tuple[str, ...] = STALL_GPT  # after CKPT_RUN on the command line, so they can change it too
    memory_per_worker: float | None = None
    data_dir: Path | None = None  # where s3rver keeps objects and the test file lives (default: a temp dir)


@contextmanager
def disk_server(data_dir: Path) -> Iterator[dict[str, str]]:
    """s3rver with bucket BUCKET; yields the AWS environment that points boto3 (and orch) at it."""
    from tests.disk_s3 import CREDENTIALS, disk_s3_server

    with disk_s3_server(data_dir / "s3", buckets=(BUCKET,)) as (url, _pid):
        yield {"AWS_ENDPOINT_URL": url, **CREDENTIALS}


def write_random_file(path: Path, size: int, chunk: int = WRITE_CHUNK) -> None:
    """Incompressible bytes, a chunk at a time."""
    with open(path, "wb") as out:
        left = size
        while left > 0:
            out.write(os.urandom(min(chunk, left)))
            left -= chunk


def transfer_config(part_mib: int, threads: int) -> Any:
    """The store's TransferConfig with another part size and thread count (everything else as ours)."""
    from boto3.s3.transfer import TransferConfig

    from orchestrator.storage import s3

    base = s3.TRANSFER_CONFIG
    return TransferConfig(multipart_threshold=min(base.multipart_threshold, part_mib * MiB),
                          multipart_chunksize=part_mib * MiB, max_concurrency=threads,
                          preferred_transfer_client=base.preferred_transfer_client)


def config_label(config: Any) -> str:
    return f"{config.multipart_chunksize // MiB} MiB parts, {config.max_concurrency} threads"


# -- the uploads -------------------------------------------------------------------------------------------------

def ours(config: Any, store: Any = None) -> Callable[[Path, str], None]:
    """orch's S3 store put_file (retry wrapper, classified errors, its client settings) with `config`."""
    from orchestrator.storage import open_store, s3

    store = store or open_store(f"s3://{BUCKET}/throughput")

    def upload(path: Path, key: str) -> None:
        with mock.patch.object(s3, "TRANSFER_CONFIG", config):
            store.put_file(key, path)
    return upload


def plain(config: Any, client: Any = None) -> Callable[[Path, str], None]:
    """boto3's upload_file on a client built the way a user would (boto3.client('s3'), default settings)."""
    import boto3

    client = client or boto3.client("s3")

    def upload(path: Path, key: str) -> None:
        client.upload_file(str(path), BUCKET, f"throughput/{key}", Config=config)
    return upload


def throughput(path: Path, setups: dict[str, Callable[[Path, str], None]], repeats: int,
               remove: Callable[[str], None]) -> dict[str, list[float]]:
    """MiB/s of each setup; interleaved (every setup once per round), each object deleted after it is timed so
    the server's disk holds one at a time."""
    size_mib = path.stat().st_size / MiB
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for repeat in range(repeats):
        for i, (name, upload) in enumerate(setups.items()):
            key = f"up-{repeat}-{i}.bin"
            start = time.perf_counter()
            upload(path, key)
            rates[name].append(size_mib / (time.perf_counter() - start))
            remove(key)
    return rates


def throughput_section(env: dict[str, str], work: Path, settings: Settings) -> list[str]:
    import boto3

    from orchestrator.storage import open_store, s3

    os.environ.update(env)
    path = work / "blob.bin"
    write_random_file(path, settings.file_bytes)
    client = boto3.client("s3")
    store = open_store(f"s3://{BUCKET}/throughput")
    # Both clients exist and have reached the server before anything is timed (a store builds its client lazily).
    client.head_bucket(Bucket=BUCKET)
    store.exists("warm-up")
    base = s3.TRANSFER_CONFIG
    setups = {"plain": plain(base, client), "ours": ours(base, store)}
    sweep = [transfer_config(part, threads) for part, threads in settings.sweep]
    for config in sweep:
        setups[f"ours {config_label(config)}"] = ours(config, store)
        setups[f"plain {config_label(config)}"] = plain(config, client)
    try:
        rates = throughput(path, setups, settings.repeats,
                           lambda key: client.delete_object(Bucket=BUCKET, Key=f"throughput/{key}"))
    finally:
        path.unlink()
    med = {name: statistics.median(v) for name, v in rates.items()}
    spread = max((max(v) - min(v)) / statistics.median(v) for v in rates.values())
    rows = [
        "",
        f"Upload of one {settings.file_bytes / GiB:g} GiB file of random bytes to s3rver (disk-backed) on "
        f"127.0.0.1, median of {settings.repeats} interleaved uploads per setup (largest spread between a setup's "
        f"uploads: {spread:.1%}). Same TransferConfig for both; boto3 on a default client (`boto3.client('s3')`).",
        "",
        "| upload | TransferConfig | MiB/s | vs boto3 `upload_file`, same config |",
        "| --- | --- | ---: | ---: |",
        f"| boto3 `upload_file` | {config_label(base)} (the store's) | {med['plain']:.0f} | 1.00 |",
        f"| orch S3 store `put_file` | {config_label(base)} (the store's) | {med['ours']:.0f} | "
        f"**{med['ours'] / med['plain']:.2f}** |",
    ]
    for config in sweep:
        label = config_label(config)
        o, p = med[f"ours {label}"], med[f"plain {label}"]
        rows.append(f"| boto3 `upload_file` | {label} | {p:.0f} | 1.00 |")
        rows.append(f"| orch S3 store `put_file` | {label} | {o:.0f} | {o / p:.2f} |")
    if sweep:
        best = max(sweep, key=lambda c: med[f"ours {config_label(c)}"])
        gain = med[f"ours {config_label(best)}"] / med["ours"]
        rows += ["", f"Fastest `put_file` config here: {config_label(best)}, {gain:.2f}x the store's "
                 f"({config_label(base)})."]
    return rows


# -- the stall ---------------------------------------------------------------------------------------------------

def stall(bench: Bench, env: dict[str, str], async_upload: bool, settings: Settings) -> tuple[float, float]:
    from orchestrator.storage import open_store

    sets = [x for s in (*CKPT_RUN, *settings.stall_sets, "storage=s3://bench/ckpt",
                        f"checkpoint.async_upload={str(async_upload).lower()}", f"name=stall-{async_upload}")
            for x in ("--set", s)]
    budget = ["--memory-per-worker", f"{settings.memory_per_worker:g}"] if settings.memory_per_worker else []
    job = bench.orch("submit", settings.stall_spec, *sets, *budget, "--wait", env=env).stdout.strip().splitlines()[-1]
    os.environ.update(env)
    root = open_store(f"s3://bench/ckpt/jobs/{job}")
    rows = [r for r in _metrics(root) if "checkpoint_stall_s" in r]
    first = first_checkpoint_step(o.key for o in root.list("checkpoints/"))
    size = sum(o.size for o in root.list(f"checkpoints/step-{first:06d}/"))
    root.delete_prefix("checkpoints/")  # the next run (and the lead's disk) need the space
    return statistics.mean(r["checkpoint_stall_s"] for r in rows), size / MiB


def first_checkpoint_step(keys: Iterable[str]) -> int:
    """The earliest step with objects under checkpoints/step-NNNNNN/ (the size of one checkpoint of the run)."""
    steps = [int(tag.removeprefix("step-")) for tag in (k.split("/")[1] for k in keys if k.count("/") >= 2)
             if tag.startswith("step-") and tag.removeprefix("step-").isdigit()]
    if not steps:
        raise RuntimeError("the stall run committed no checkpoint")
    return min(steps)


def _metrics(store: Any) -> list[dict]:
    import json

    return [json.loads(line) for line in store.get_bytes("metrics.jsonl").decode().splitlines() if line.strip()]


def stall_section(bench: Bench, env: dict[str, str], settings: Settings) -> list[str]:
    sync_stall, size_mb = stall(bench, env, False, settings)
    async_stall, _ = stall(bench, env, True, settings)
    model = ", ".join(s.removeprefix("model.") for s in settings.stall_sets if s.startswith("model."))
    return [
        f"{settings.stall_spec} ({model or 'as in the spec'}), ZeRO-3 on 2 workers, {size_mb:,.0f} MiB per "
        "checkpoint, to s3rver. Stall: the training time a checkpoint costs (mean over the run's checkpoints).",
        "",
        "| figure | value | ratio |",
        "| --- | ---: | ---: |",
        f"| training stall per checkpoint, synchronous upload | {sync_stall:.2f} s | 1.00 |",
        f"| training stall per checkpoint, background upload | {async_stall:.2f} s | "
        f"**{async_stall / sync_stall:.2f}** |",
    ]


def run(bench: Bench | None, settings: Settings | None = None) -> str:
    settings = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="orch-bench-s3-", dir=settings.data_dir) as tmp:
        work = Path(tmp)
        try:
            with disk_server(work) as env:
                lines = stall_section(bench, env, settings) if settings.stall and bench else []
                if settings.throughput:
                    lines += throughput_section(env, work, settings)
        except Exception as exc:  # the server's own log says what an InternalError was; it goes with the dir
            log = "\n".join(p.read_text()[-3000:] for p in work.glob("s3rver-*.log"))
            raise RuntimeError(f"{exc}\n--- s3rver log ---\n{log}") from exc
    return "\n".join(lines).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file-gib", type=float, default=FILE_BYTES / GiB)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--no-sweep", action="store_true", help="only the store's own TransferConfig")
    parser.add_argument("--no-stall", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--stall-spec", default=STALL_SPEC)
    parser.add_argument("--stall-set", action="append", metavar="KEY=VALUE",
                        help="model/run settings of the stall runs (repeatable; replaces the small default GPT)")
    parser.add_argument("--memory-per-worker", type=float, metavar="GiB")
    parser.add_argument("--data-dir", type=Path, help="where the server's objects and the test file go")
    args = parser.parse_args()
    settings = Settings(file_bytes=int(args.file_gib * GiB), repeats=args.repeats,
                        sweep=() if args.no_sweep else SWEEP, stall=not args.no_stall,
                        throughput=not args.no_throughput, stall_spec=args.stall_spec,
                        stall_sets=tuple(args.stall_set) if args.stall_set else STALL_GPT,
                        memory_per_worker=args.memory_per_worker, data_dir=args.data_dir)
    if settings.stall:
        with Bench() as bench:
            print(run(bench, settings))
    else:  # the throughput needs no cluster
        print(run(None, settings))


if __name__ == "__main__":
    main()
