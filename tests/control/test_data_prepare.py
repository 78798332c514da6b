"""`orch data prepare` on a local --out with a tiny corpus: the plan and refusals of the control plane, and the
units run in this process (the Ray job's own code, without Ray), so every file it writes can be checked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.control import cli
from orchestrator.control.data_prepare import PrepareOptions, plan_preparation, store_plan
from orchestrator.core.errors import OrchError
from orchestrator.core.prepare_plan import UnitRecord
from orchestrator.core.token_shards import read_index, unit_key
from orchestrator.runtime import data_prepare as runtime
from orchestrator.storage import open_store

DOCS_TXT = "The quick brown fox jumps over the lazy dog.\nA second line, with ünïcödé and emoji 🦊.\n"
DOCS_JSONL = ["first json document", "second one\nwith a newline", "third: tabs\tand  spaces"]
DOCS_PARQUET = ["parquet row one", "parquet row two is a bit longer than the first"]


def local_map(store_uri: str, units: list[int]) -> list[int]:
    return [runtime.run_unit_task(store_uri, u) for u in units]


def prepare_here(inputs: list[str], out: Path, **settings: object) -> tuple[int, list[int]]:
    """What `orch data prepare` does, with the units run here; (units skipped, units run)."""
    ran: list[int] = []

    def mapper(uri: str, units: list[int]) -> list[int]:
        ran.extend(units)
        return local_map(uri, units)

    store = open_store(str(out))
    plan, text = plan_preparation(PrepareOptions(inputs=tuple(inputs), out=str(out), **settings), store)
    skipped = store_plan(store, plan, text)
    runtime.run(store.uri, map_units=mapper)
    return skipped, ran


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(DOCS_TXT)
    (root / "b.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS_JSONL)))
    pq.write_table(pa.table({"text": DOCS_PARQUET}), root / "sub" / "c.parquet")
    (root / "README.md").write_text("not an input: unknown suffixes inside folders are ignored")
    return root


def decoded_documents(out: Path) -> list[str]:
    from tokenizers import Tokenizer

    store = open_store(str(out))
    index = read_index(store)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    docs: list[str] = []
    for info in store.list("units"):
        record = UnitRecord.from_json(store.get_bytes(info.key))
        ids = np.concatenate([np.fromfile(out / s.key, dtype=index.dtype) for s in record.shards])
        assert ids[-1] == index.eos_id  # every document is followed by eos
        cuts = np.flatnonzero(ids == index.eos_id)
        docs += [tokenizer.decode(part.tolist(), skip_special_tokens=False)
                 for part in np.split(ids, cuts + 1)[:-1]]
        docs = [d.removesuffix("<|endoftext|>") for d in docs]
    return docs


def test_shards_decode_back_to_the_documents_and_the_index_matches_the_files(corpus: Path, tmp_path: Path):
    out = tmp_path / "data"
    prepare_here([str(corpus)], out, vocab_size=300, shard_tokens=16)
    assert decoded_documents(out) == [DOCS_TXT, *DOCS_JSONL, *DOCS_PARQUET]
    index = read_index(open_store(str(out)))
    assert index.dtype == "<u2" and index.vocab_size == 300 and index.eos_id == 0
    for shard in index.shards:
        raw = (out / shard.key).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == shard.sha256
        assert len(raw) == 2 * shard.tokens and 0 < shard.tokens <= 16
    n = len(index.shards)
    assert len(index.split("val")) == max(1, round(n * 0.05)) and index.split("train")
    assert [s.key for s in index.shards] == sorted(s.key for s in index.shards)
    assert list(out.iterdir()) and (out / "index.json").stat().st_mtime >= max(
        p.stat().st_mtime for p in (out / "shards").iterdir())


def test_large_text_files_are_cut_at_line_boundaries(tmp_path: Path):
    text = "".join(f"line {i} of the big file, with some words\n" for i in range(300))
    (tmp_path / "big.txt").write_text(text)
    out = tmp_path / "data"
    prepare_here([str(tmp_path / "big.txt")], out, vocab_size=300, shard_tokens=64, unit_bytes=1000)
    docs = decoded_documents(out)
    assert len(docs) == len(open_store(str(out)).list("units")) > 5
    assert "".join(docs) == text and all(d.endswith("\n") for d in docs)


def test_a_rerun_skips_committed_units_and_a_different_tokenizer_is_refused(corpus: Path, tmp_path: Path):
    out = tmp_path / "data"
    skipped, ran = prepare_here([str(corpus)], out, vocab_size=300, shard_tokens=16)
    assert skipped == 0 and ran == [0, 1, 2]
    first = (out / "index.json").read_bytes()
    (out / unit_key(1)).unlink()  # as if the run had stopped before unit 1 committed
    (out / "index.json").unlink()
    skipped, ran = prepare_here([str(corpus)], out, vocab_size=300, shard_tokens=16)
    assert skipped == 2 and ran == [1]
    assert (out / "index.json").read_bytes() == first
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(OrchError, match="another tokenizer"):
        prepare_here([str(corpus)], out, vocab_size=280, shard_tokens=16)
    assert sorted(p.name for p in out.rglob("*")) == before


def test_a_redone_unit_removes_parts_an_earlier_try_left_beyond_its_own(corpus: Path, tmp_path: Path):
    from orchestrator.core.token_shards import shard_key

    out = tmp_path / "data"
    prepare_here([str(corpus)], out, vocab_size=300, shard_tokens=16)
    record = UnitRecord.from_json((out / unit_key(1)).read_bytes())
    leftovers = [out / shard_key(1, len(record.shards) + i) for i in range(2)]  # a longer earlier try's parts
    for path in leftovers:
        path.write_bytes(b"\x00\x00")
    (out / unit_key(1)).unlink()
    (out / "index.json").unlink()
    prepare_here([str(corpus)], out, vocab_size=300, shard_tokens=16)
    assert not any(path.exists() for path in leftovers)
    listed = {s.key for s in read_index(open_store(str(out))).shards}
    assert listed == {str(p.relative_to(out)) for p in (out / "shards").iterdir()}


def test_uint32_for_a_vocabulary_beyond_uint16_and_a_tokenizer_without_eos_is_refused(corpus: Path, tmp_path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000, "</s>": 70_001}
    big = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    big.save(str(tmp_path / "big.json"))
    (tmp_path / "w.jsonl").write_text(json.dumps({"body": "w1 w69999 w5"}) + "\n" + json.dumps({"body": "w7"}) + "\n")
    with pytest.raises(OrchError, match="--eos-token"):
        prepare_here([str(tmp_path / "w.jsonl")], tmp_path / "x", tokenizer=str(tmp_path / "big.json"),
                     text_field="body")
    out = tmp_path / "data"
    prepare_here([str(tmp_path / "w.jsonl")], out, tokenizer=str(tmp_path / "big.json"), eos_token="</s>",
                 text_field="body", shard_tokens=3)
    index = read_index(open_store(str(out)))
    assert index.dtype == "<u4" and index.vocab_size == 70_002 and index.eos_id == 70_001
    ids = np.concatenate([np.fromfile(out / s.key, dtype="<u4") for s in index.shards])
    assert ids.tolist() == [1, 69_999, 5, 70_001, 7, 70_001]


def test_too_few_shards_says_to_lower_shard_tokens(corpus: Path, tmp_path: Path):
    with pytest.raises(OrchError, match="Lower --shard-tokens"):
        prepare_here([str(corpus / "a.txt")], tmp_path / "data", vocab_size=300)


@pytest.mark.parametrize("args, needle", [
    (["{c}/a.txt"], "exactly one of --tokenizer"),
    (["{c}/a.txt", "--vocab-size", "300", "--tokenizer", "{c}/t.json"], "exactly one of --tokenizer"),
    (["{c}/nope.txt", "--vocab-size", "300"], "no such file"),
    (["{c}/README.md", "--vocab-size", "300"], "unknown file type"),
    (["{c}/empty.txt", "--vocab-size", "300"], "is empty"),
    (["{c}/b.jsonl", "--vocab-size", "300", "--text-field", "body"], "--text-field"),
    (["{c}/sub/c.parquet", "--vocab-size", "300", "--text-field", "body"], "--text-field"),
    (["{c}/a.txt", "--vocab-size", "100"], "at least 257"),
    (["{c}/a.txt", "--vocab-size", "300", "--val-fraction", "0"], "--val-fraction"),
    (["{c}/a.txt", "--tokenizer", "{c}/a.txt"], "cannot load it"),
])
def test_bad_input_is_refused_with_exit_2_and_nothing_written(corpus: Path, tmp_path: Path, capsys, monkeypatch,
                                                              args: list[str], needle: str):
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    (corpus / "empty.txt").write_text("")
    out = tmp_path / "data"
    code = cli.main(["data", "prepare", *[a.format(c=corpus) for a in args], "--out", str(out)])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert needle in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "home" / "cluster").exists()


def test_the_sdk_refuses_like_the_cli_before_any_cluster_starts(corpus: Path, tmp_path: Path):
    from orchestrator import Client

    client = Client(home=tmp_path / "home")
    with pytest.raises(OrchError, match="--text-field"):
        client.prepare_data([str(corpus)], str(tmp_path / "data"), vocab_size=300, text_field="body")
    assert not (tmp_path / "data").exists() and not (tmp_path / "home" / "cluster").exists()


def test_the_ray_job_ends_with_one_line_the_cli_shows(corpus: Path, tmp_path: Path, capsys, monkeypatch):
    from orchestrator.core.prepare_plan import ERROR_PREFIX

    out = tmp_path / "data"
    store = open_store(str(out))
    plan, text = plan_preparation(PrepareOptions(inputs=(str(corpus / "a.txt"),), out=str(out), vocab_size=300),
                                  store)
    store_plan(store, plan, text)
    monkeypatch.setattr(runtime, "ray_map", local_map)
    assert runtime.main(["--out", str(out)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(ERROR_PREFIX) and "Lower --shard-tokens" in last
    assert not (out / "index.json").exists()
