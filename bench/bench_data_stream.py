"""Streaming prepared datasets: a reader's peak RSS on a 100 MB vs a 2 GB dataset, and data loading's share of
step time at the GPT-2-small shape (85M non-embedding parameters). Prints a markdown section.

    python -m bench.bench_data_stream             # both parts (bench.run calls it so)
    python -m bench.bench_data_stream --share     # only the step-time share (e.g. on a GPU machine)
    python -m bench.bench_data_stream --rss       # only the memory part

The reader is the workers' own (orchestrator.workloads.lm_data.StreamedData over token_stream), run in a plain
process per measurement so nothing else shares its peak RSS. Both read paths are measured: a local dataset
(positional reads) and ranged reads through the ObjectStore interface (the code an s3:// dataset uses, here
against a local store so the figure is the reader's and not a network's). Datasets are written under
$ORCH_BENCH_DATA (default /tmp) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from orchestrator.core.token_shards import INDEX_KEY, DatasetIndex, Shard, shard_key

REPO = Path(__file__).resolve().parents[1]
VOCAB = 50304
SEQ_LEN = 1024
SHARD_TOKENS = 32 * 1024 * 1024  # 64 MiB shards of uint16
VAL_TOKENS = 1024 * 1024
RSS_BATCHES, RSS_BATCH = 400, 16  # 6.5M tokens read per measurement, the same on both sizes
MODEL = {"n_layer": 12, "n_head": 12, "d_model": 768, "seq_len": SEQ_LEN, "vocab_size": VOCAB}


def write_dataset(root: Path, total_bytes: int) -> None:
    """Random ids in 64 MiB shards plus a small val shard, index.json last (prepare's layout)."""
    rng = np.random.default_rng(0)
    remaining, shards = total_bytes // 2, []
    (root / "shards").mkdir(parents=True, exist_ok=True)
    while remaining > 0 or not any(s.split == "val" for s in shards):
        split = "train" if remaining > 0 else "val"
        n = min(remaining, SHARD_TOKENS) if split == "train" else VAL_TOKENS
        raw = rng.integers(0, VOCAB, n, dtype=np.uint16).astype("<u2").tobytes()
        key = shard_key(len(shards), 0)
        (root / key).write_bytes(raw)
        shards.append(Shard(key=key, tokens=n, sha256=hashlib.sha256(raw).hexdigest(), split=split))
        remaining -= n if split == "train" else 0
    index = DatasetIndex(vocab_size=VOCAB, dtype="<u2", eos_id=0, shards=tuple(shards))
    (root / INDEX_KEY).write_bytes(index.to_json())


def open_data(path: str, ranged: bool, batch: int):  # noqa: ANN201 - StreamedData (imports torch)
    from orchestrator.storage import open_store
    from orchestrator.workloads.lm_data import StreamedData
    from orchestrator.workloads.token_stream import TokenStream, open_stream

    stream = open_stream(path, SEQ_LEN, VOCAB, seed=0)
    if ranged:  # the same index, read the way a remote store is read
        stream = TokenStream(stream.index, _RangedOnly(open_store(path)), SEQ_LEN, seed=0)
    return StreamedData(stream, batch)


class _RangedOnly:
    """A store seen only through get_range, so the reader takes its remote (ranged-read, block-cache) path."""

    def __init__(self, store):  # noqa: ANN001
        self._store, self.uri = store, store.uri

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._store.get_range(key, start, length)


def rss_child(path: str, ranged: bool) -> None:
    """One measurement, in its own process: peak RSS before and after reading RSS_BATCHES batches."""
    import torch  # noqa: F401 - a worker has torch loaded; so does this process

    data = open_data(path, ranged, RSS_BATCH)
    data.batch(1, 0, RSS_BATCH)
    before = _status("VmHWM")
    started = time.perf_counter()
    for step in range(1, RSS_BATCHES + 1):
        data.batch(step, 0, RSS_BATCH)
    seconds = time.perf_counter() - started
    print(json.dumps({"before": before, "peak": _status("VmHWM"), "anon": _status("RssAnon"),
                      "ms_per_batch": 1000 * seconds / RSS_BATCHES}))


def _status(field: str) -> int:
    """Bytes of a /proc/self/status field. VmHWM, not getrusage's ru_maxrss: a child started by vfork+exec
    inherits its parent's peak in ru_maxrss (here, the parent that just wrote the dataset). RssAnon is the
    process's own memory, without mapped files such as torch's libraries."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure_rss(path: Path, ranged: bool) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_data_stream", "--rss-child", str(path),
                           *(["--ranged"] if ranged else [])], cwd=REPO, text=True, capture_output=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rss_section(base: Path) -> str:
    rows, results = [], {}
    for label, size in (("100 MB", 100 * 10**6), ("2 GB", 2 * 10**9)):
        root = base / label.replace(" ", "")
        write_dataset(root, size)
        try:
            for ranged in (False, True):
                results[(label, ranged)] = r = measure_rss(root, ranged)
                rows.append(f"| {label} | {'ranged reads (S3 path)' if ranged else 'local reads'} | "
                            f"{r['peak'] / 2**20:.1f} MiB | {r['anon'] / 2**20:.1f} MiB | "
                            f"{(r['peak'] - r['before']) / 2**20:.1f} MiB | {r['ms_per_batch']:.2f} ms |")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    ratios = [results[("2 GB", r)][k] / results[("100 MB", r)][k] for k in ("peak", "anon") for r in (False, True)]
    return ("Peak RSS (VmHWM) of a process running the workers' reader for "
            f"{RSS_BATCHES} batches of {RSS_BATCH} x {SEQ_LEN + 1} tokens (torch loaded, as in a worker):\n\n"
            "| dataset | read path | peak RSS | anonymous RSS at end | peak growth while reading | per batch |\n"
            "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows)
            + f"\n\n2 GB / 100 MB: peak RSS {ratios[0]:.3f} (local reads), {ratios[1]:.3f} (ranged reads); anonymous "
              f"RSS {ratios[2]:.3f}, {ratios[3]:.3f} (target: within 5%). Peak RSS includes the mapped pages of "
              "torch's libraries; the anonymous RSS is the process's own memory.")


def share_section(base: Path) -> str:
    import torch

    from orchestrator.workloads.gpt.config import GPTModelConfig, param_count
    from orchestrator.workloads.gpt.model import GPT

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch, steps = (16, 30) if cuda else (4, 4)
    root = base / "share"
    write_dataset(root, 200 * 10**6)
    cfg = GPTModelConfig(**MODEL)
    model = GPT(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    lines = []
    try:
        for ranged in (False, True):
            data = open_data(str(root), ranged, batch)
            load_s = step_s = 0.0
            for step in range(1, steps + 2):
                started = time.perf_counter()
                x, y = data.batch(step, 0, batch)
                loaded = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    _, loss = model(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()
                if step > 1:  # the first step warms up kernels and caches
                    load_s += loaded - started
                    step_s += time.perf_counter() - started
            started = time.perf_counter()
            for step in range(1000, 1020):  # the reads themselves, not overlapped with anything
                data.stream.windows(step, 0, batch)
            read_ms = (time.perf_counter() - started) / 20 * 1000
            lines.append(f"| {'ranged reads (S3 path)' if ranged else 'local reads'} | {read_ms:.2f} ms | "
                         f"{1000 * load_s / steps:.2f} ms | {1000 * step_s / steps:.0f} ms | "
                         f"{100 * load_s / step_s:.3f}% |")
            print(lines[-1], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    non_embedding = param_count(cfg) - cfg.vocab_size * cfg.d_model - cfg.seq_len * cfg.d_model
    return (f"GPT-2-small shape ({non_embedding / 1e6:.0f}M non-embedding, {param_count(cfg) / 1e6:.0f}M parameters), "
            f"micro batch {batch} x {SEQ_LEN} tokens, {where}, AdamW{', bf16 autocast' if cuda else ''}; mean of "
            f"{steps} steps after one warm-up step. A plain training step, no orchestration, so the share is an "
            "upper bound of the share in an `orch` job (whose steps are longer):\n\n"
            "| read path | reading a batch | waiting in data.batch() | whole step | share of step |\n"
            "| --- | --- | --- | --- | --- |\n" + "\n".join(lines)
            + "\n\n*Reading a batch*: the reads alone. *Waiting in data.batch()*: what the loop waits, the next micro "
            "batch being read during the current step. Target: share < 2%.")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-child")
    parser.add_argument("--ranged", action="store_true")
    parser.add_argument("--share", action="store_true", help="only the step-time share")
    parser.add_argument("--rss", action="store_true", help="only the memory part")
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.ranged)
        return
    base = Path(tempfile.mkdtemp(prefix="orch-bench-data-", dir=os.environ.get("ORCH_BENCH_DATA", "/tmp")))
    try:
        parts = [] if args.share else ["### Worker memory: 100 MB vs 2 GB dataset\n\n" + rss_section(base)]
        if not args.rss:
            parts.append("### Data loading's share of step time\n\n" + share_section(base))
        print("\n\n".join(parts))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
