"""`orch data prepare` throughput on this machine's embedded cluster vs one plain process running the same
tokenizer over the same files.

The corpus (~64 MB: .txt files and .jsonl files) is made of the bundled corpus's lines in a seeded shuffle; the
tokenizer is a byte-level BPE of 8,192 tokens trained once beforehand, handed to both sides as tokenizer.json.
The baseline reads each file, hands ~1 MB pieces of whole lines (JSONL: each record's text) to
`Tokenizer.encode_batch` and appends the ids to one .bin file: once with the tokenizer's thread pool held to one
thread (one process, one core), once with its default pool (all cores).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Bench

CORPUS_MB = 64
VOCAB = 8192
UNIT_MB = 8

BASELINE = r'''
import json, sys, time
from pathlib import Path
import numpy as np
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
eos = tok.token_to_id("<|endoftext|>")
tokens = 0
start = time.perf_counter()
with open(sys.argv[3], "wb") as out:
    for path in sorted(Path(sys.argv[2]).rglob("*")):
        if path.suffix == ".jsonl":
            docs = [json.loads(line)["text"] for line in path.open()]
            batches = [docs[i:i + 2000] for i in range(0, len(docs), 2000)]
            ends = True
        elif path.suffix == ".txt":
            text = path.read_text()
            lines = text.splitlines(keepends=True)
            pieces, piece, size = [], [], 0
            for line in lines:
                piece.append(line); size += len(line)
                if size >= 1 << 20:
                    pieces.append("".join(piece)); piece, size = [], 0
            pieces.append("".join(piece))
            batches = [pieces[i:i + 4] for i in range(0, len(pieces), 4)]
            ends = False
        else:
            continue
        for batch in batches:
            parts = []
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                parts.append(np.asarray(enc.ids, dtype="<u2"))
                if ends:
                    parts.append(np.asarray([eos], dtype="<u2"))
            ids = np.concatenate(parts)
            out.write(ids.tobytes())
            tokens += len(ids)
print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - start}))
'''


def make_corpus(root: Path, megabytes: int) -> int:
    """Half .txt files, half .jsonl files; returns the bytes written."""
    lines = (REPO / "orchestrator/workloads/gpt/corpus/corpus.txt").read_text().splitlines(keepends=True)
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    target, written, n = megabytes << 20, 0, 0
    while written < target:
        block = []
        for _ in range(8):  # ~6 MB a file
            rng.shuffle(lines)
            block += lines
        if n % 2 == 0:
            data = "".join(block).encode()
            (root / f"part-{n:02d}.txt").write_bytes(data)
        else:
            docs = ["".join(block[i:i + 20]) for i in range(0, len(block), 20)]
            data = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
            (root / f"part-{n:02d}.jsonl").write_bytes(data)
        written += len(data)
        n += 1
    return written


def baseline(tokenizer: Path, corpus: Path, scratch: Path, threads: int | None) -> dict[str, float]:
    env = {**os.environ, **({"RAYON_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run([sys.executable, "-c", BASELINE, str(tokenizer), str(corpus), str(scratch / "all.bin")],
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout)


def run(bench: Bench) -> str:
    from orchestrator.control.data_prepare import train_tokenizer
    from orchestrator.core.text_inputs import resolve_inputs

    work = Path(tempfile.mkdtemp(prefix="orch-bench-prepare-"))
    corpus = work / "corpus"
    size = make_corpus(corpus, CORPUS_MB)
    files = len(list(corpus.iterdir()))
    start = time.perf_counter()
    tokenizer = train_tokenizer(resolve_inputs([str(corpus)]), "text", VOCAB)
    train_s = time.perf_counter() - start
    tokenizer.save(str(work / "tokenizer.json"))

    single = baseline(work / "tokenizer.json", corpus, work, threads=1)
    pooled = baseline(work / "tokenizer.json", corpus, work, threads=None)
    args = ("data", "prepare", str(corpus), "--out", str(work / "data"), "--tokenizer", str(work / "tokenizer.json"),
            "--unit-mb", str(UNIT_MB), "--json")
    start = time.perf_counter()
    result = json.loads(bench.orch(*args).stdout)
    orch_s = time.perf_counter() - start
    start = time.perf_counter()
    rerun = json.loads(bench.orch(*args).stdout)
    rerun_s = time.perf_counter() - start

    tokens = result["tokens_train"] + result["tokens_val"]
    rate = tokens / orch_s
    base_rate = single["tokens"] / single["seconds"]
    pooled_rate = pooled["tokens"] / pooled["seconds"]
    rows = [
        ("one plain process, tokenizer on 1 thread (baseline)", single["tokens"], single["seconds"], base_rate),
        ("one plain process, tokenizer's default thread pool", pooled["tokens"], pooled["seconds"], pooled_rate),
        (f"`orch data prepare` ({result['units']} units of {UNIT_MB} MiB, Ray tasks), command wall time",
         tokens, orch_s, rate),
    ]
    table = ["| run | tokens | seconds | tokens/s | vs baseline |", "| --- | ---: | ---: | ---: | ---: |"]
    table += [f"| {name} | {t:,} | {s:.1f} | {t / s:,.0f} | {r / base_rate:.2f}x |" for name, t, s, r in rows]
    print(table, rerun_s, file=sys.stderr, flush=True)
    shutil_rm(work)
    return (f"Corpus: {size / 2**20:.0f} MiB of text in {files} files (.txt and .jsonl), "
            f"byte-level BPE of {VOCAB:,} tokens (trained beforehand on it in {train_s:.1f} s, the same "
            f"tokenizer.json for every run), {result['shards']} shards of up to 16,777,216 tokens, "
            f"{result['dtype']}.\n\n" + "\n".join(table) + "\n\n"
            f"`orch data prepare`'s time is the whole command: input checks, storing tokenizer and plan, the Ray "
            f"job's submission and start, one task per unit (one CPU each), the index. A rerun of the same "
            f"command skipped all {rerun['units_skipped']} units and took {rerun_s:.1f} s.\n")


def shutil_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
