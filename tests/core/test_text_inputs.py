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
