"""The streamed safetensors writer: files load with safetensors itself, byte for byte the tensors given."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from orchestrator.control.safetensors_stream import Entry, header_bytes, tensor_entry, write_file


def roundtrip(tmp_path, tensors: dict[str, torch.Tensor], **kw) -> dict[str, torch.Tensor]:
    path = tmp_path / "m.safetensors"
    write_file(path, [tensor_entry(name, t, **kw) for name, t in tensors.items()], metadata={"format": "pt"})
    return load_file(str(path))


def test_mixed_dtypes_round_trip_exactly(tmp_path):
    torch.manual_seed(0)
    tensors = {"w32": torch.randn(7, 5), "w16": torch.randn(3, 9).to(torch.bfloat16),
               "h": torch.randn(4).half(), "d": torch.randn(2, 2, 2).double(),
               "idx": torch.arange(-5, 6, dtype=torch.int64), "i8": torch.tensor([-1, 2], dtype=torch.int8),
               "mask": torch.tensor([True, False, True]), "scalar": torch.tensor(3.5)}
    loaded = roundtrip(tmp_path, tensors)
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        assert torch.equal(loaded[name], t)


def test_empty_dimension_and_non_contiguous_input(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"empty": torch.zeros(0, 4), "a": base[:, 1:3], "empty2": torch.zeros(5, 0, dtype=torch.int32)}
    loaded = roundtrip(tmp_path, tensors)
    assert loaded["empty"].shape == (0, 4) and loaded["empty2"].shape == (5, 0)
    assert torch.equal(loaded["a"], base[:, 1:3])


def test_transposed_entries_are_written_transposed(tmp_path):
    w = torch.randn(3, 5)
    path = tmp_path / "t.safetensors"
    write_file(path, [tensor_entry("w", w, transpose=True), tensor_entry("b", torch.ones(5), transpose=True)])
    loaded = load_file(str(path))
    assert loaded["w"].shape == (5, 3) and torch.equal(loaded["w"], w.t())
    assert torch.equal(loaded["b"], torch.ones(5))


def test_dtype_cast_and_lazy_sources(tmp_path):
    class Lazy:  # what open_consolidated yields: shape/dtype known, bytes produced on demand
        calls = 0

        def __init__(self, t: torch.Tensor) -> None:
            self.t, self.shape, self.dtype = t, t.shape, torch.float32

        def materialize(self) -> torch.Tensor:
            Lazy.calls += 1
            return self.t.float()

    src = torch.randn(4, 6).to(torch.bfloat16)
    entries = [tensor_entry("x", Lazy(src)), tensor_entry("y", Lazy(src), dtype=torch.bfloat16)]
    assert Lazy.calls == 0  # building the plan reads nothing
    write_file(tmp_path / "l.safetensors", entries)
    assert Lazy.calls == 2
    loaded = load_file(str(tmp_path / "l.safetensors"))
    assert loaded["x"].dtype == torch.float32 and torch.equal(loaded["x"], src.float())
    assert torch.equal(loaded["y"], src)


def test_header_is_aligned_and_describes_contiguous_ranges(tmp_path):
    entries = [tensor_entry(n, torch.zeros(s, dtype=d)) for n, s, d in
               [("a", (3,), torch.int8), ("bb", (2, 3), torch.float32), ("c", (1,), torch.bfloat16)]]
    raw = header_bytes(entries, {"format": "pt"})
    (length,) = struct.unpack("<Q", raw[:8])
    assert length == len(raw) - 8 and length % 8 == 0
    header = json.loads(raw[8:])
    assert header["__metadata__"] == {"format": "pt"}
    assert [header[n]["data_offsets"] for n in ("a", "bb", "c")] == [[0, 3], [3, 27], [27, 29]]
    write_file(tmp_path / "h.safetensors", entries, {"format": "pt"})
    with safe_open(str(tmp_path / "h.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert (tmp_path / "h.safetensors").stat().st_size == 8 + length + 29


def test_a_tensor_unlike_its_header_is_refused(tmp_path):
    entry = Entry("x", (2, 2), torch.float32, lambda: torch.zeros(3))
    with pytest.raises(ValueError, match="header says"):
        write_file(tmp_path / "bad.safetensors", [entry])


def test_duplicate_names_are_refused():
    with pytest.raises(ValueError, match="twice"):
        header_bytes([tensor_entry("x", torch.zeros(1)), tensor_entry("x", torch.zeros(1))])
