"""Inputs resolved into files and cut into units: every line read exactly once, whatever the cut."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from orchestrator.core.text_inputs import InputError, _lines, plan_units, resolve_inputs


@pytest.mark.parametrize("unit_bytes", [1, 2, 7, 64, 1000, 10**7])
def test_every_line_belongs_to_exactly_one_unit(tmp_path: Path, unit_bytes: int):
    rng = random.Random(unit_bytes)
    text = "".join("".join(rng.choice("ab c\n") for _ in range(rng.randint(0, 40))) + "\n" for _ in range(300))
    text += "a last line without a newline"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    units = plan_units(resolve_inputs([str(path)]), unit_bytes)
    assert [u.unit for u in units] == list(range(len(units)))
    assert b"".join(line for u in units for line in _lines(u.uri, u.start, u.end)) == text.encode()


def test_folders_are_searched_recursively_in_name_order_and_parquet_is_one_unit(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.jsonl").write_text('{"text": "x"}\n' * 100)
    (tmp_path / "a.txt").write_text("hello\n" * 100)
    (tmp_path / "c.parquet").write_bytes(b"x" * 1000)  # not read while planning
    (tmp_path / "notes.md").write_text("ignored")
    files = resolve_inputs([str(tmp_path)])
    assert [Path(f.uri).name for f in files] == ["a.txt", "z.jsonl", "c.parquet"]
    units = plan_units(files, 256)
    assert [u.fmt for u in units].count("parquet") == 1 and len(units) == 3 + 6 + 1


def test_a_file_named_twice_is_refused(tmp_path: Path):
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(InputError, match="named twice"):
        resolve_inputs([str(tmp_path), str(tmp_path / "a.txt")])


def test_s3_prefixes_and_objects_are_read_by_ranged_gets(s3_env: str):
    from orchestrator.core.text_inputs import iter_pieces
    from orchestrator.storage import open_store

    root = open_store(s3_env)
    text = "".join(f"line {i}\n" for i in range(500))
    root.put_bytes("in/a.txt", text.encode())
    root.put_bytes("in/deeper/b.jsonl", b'{"text": "one"}\n{"text": "two"}\n')
    root.put_bytes("in/skip.md", b"not an input")
    files = resolve_inputs([f"{s3_env}/in"])
    assert [f.uri for f in files] == [f"{s3_env}/in/a.txt", f"{s3_env}/in/deeper/b.jsonl"]
    assert resolve_inputs([f"{s3_env}/in/a.txt"])[0].size == len(text)
    units = plan_units(files, 1000)
    assert "".join(t for u in units if u.fmt == "txt" for t, _ in iter_pieces(u, "text")) == text
    assert [t for t, _ in iter_pieces(units[-1], "text")] == ["one", "two"]
    for bad, needle in ((f"{s3_env}/in/skip.md", "unknown file type"), (f"{s3_env}/nothing", "no such object")):
        with pytest.raises(InputError, match=needle):
            resolve_inputs([bad])
