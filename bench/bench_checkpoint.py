"""Checkpoints to S3: training stall per checkpoint with background vs synchronous upload (same model, same
server), and upload throughput of our S3 store vs plain boto3 `upload_file` to the same server."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import Bench

BIG_GPT = ("model.n_layer=4", "model.d_model=256", "model.n_head=8", "model.seq_len=64")
CKPT_RUN = ("train.steps=40", "train.eval_every=0", "checkpoint.every_steps=10", "checkpoint.keep_latest=0",
            "scaling.num_workers=2", "deepspeed.zero_stage=3", "train.report_every=10")
FILE_MB = 64
REPEATS = 3
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait()


def stall(bench: Bench, env: dict[str, str], async_upload: bool) -> tuple[float, float]:
    job = bench.submit("jobs/examples/gpt-zero3.yaml", *BIG_GPT, *CKPT_RUN, "storage=s3://bench/ckpt",
                       f"checkpoint.async_upload={str(async_upload).lower()}", f"name=stall-{async_upload}", env=env)
    from orchestrator.storage import open_store

    os.environ.update(env)
    rows = [r for r in _metrics(open_store(f"s3://bench/ckpt/jobs/{job}")) if "checkpoint_stall_s" in r]
    size = sum(o.size for o in open_store(f"s3://bench/ckpt/jobs/{job}").list("checkpoints/step-000010/"))
    return statistics.mean(r["checkpoint_stall_s"] for r in rows), size / 2**20


def _metrics(store) -> list[dict]:
    import json

    return [json.loads(line) for line in store.get_bytes("metrics.jsonl").decode().splitlines() if line.strip()]


def upload_throughput(env: dict[str, str]) -> tuple[float, float]:
    import boto3

    from orchestrator.storage import open_store

    os.environ.update(env)
    path = Path(tempfile.mkdtemp()) / "blob.bin"
    path.write_bytes(os.urandom(FILE_MB * 2**20))
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    store = open_store("s3://bench/throughput")
    ours, plain = [], []
    for i in range(REPEATS):
        start = time.perf_counter()
        store.put_file(f"ours-{i}.bin", path)
        ours.append(FILE_MB / (time.perf_counter() - start))
        start = time.perf_counter()
        client.upload_file(str(path), "bench", f"throughput/plain-{i}.bin")
        plain.append(FILE_MB / (time.perf_counter() - start))
    path.unlink()
    return statistics.median(ours), statistics.median(plain)


def run(bench: Bench) -> str:
    with moto_server() as url:
        env = {"AWS_ENDPOINT_URL": url, **CREDENTIALS}
        import boto3

        boto3.client("s3", endpoint_url=url, **{k.lower(): v for k, v in CREDENTIALS.items()
                                                 if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket="bench")
        sync_stall, size_mb = stall(bench, env, async_upload=False)
        async_stall, _ = stall(bench, env, async_upload=True)
        ours, plain = upload_throughput(env)
    return "\n".join([
        f"GPT 4x256 (ZeRO-3, 2 workers), checkpoint every 10 steps, {size_mb:.0f} MiB per checkpoint, to a local "
        "moto S3 server process.",
        "",
        "| figure | value | ratio |",
        "| --- | ---: | ---: |",
        f"| training stall per checkpoint, synchronous upload | {sync_stall:.2f} s | 1.00 |",
        f"| training stall per checkpoint, background upload | {async_stall:.2f} s | "
        f"**{async_stall / sync_stall:.2f}** |",
        f"| upload throughput, boto3 `upload_file` ({FILE_MB} MiB, median of {REPEATS}) | {plain:.0f} MiB/s | 1.00 |",
        f"| upload throughput, orch S3 store `put_file` | {ours:.0f} MiB/s | **{ours / plain:.2f}** |",
    ])


if __name__ == "__main__":
    with Bench() as b:
        print(run(b))
