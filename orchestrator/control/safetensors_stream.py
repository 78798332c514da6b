"""Write a safetensors file one tensor at a time, so a model is never held whole in memory while it is saved.

`safetensors.torch.save_file` wants every tensor materialised in one dict before it writes. The format needs
only each tensor's dtype and shape up front: an 8-byte little-endian header length, a JSON header (padded with
spaces to a multiple of 8) giving every tensor's dtype, shape and byte range, then the raw little-endian bytes in
header order. So the header is computed from shapes alone, and each tensor is produced by its `load` callable,
written, and dropped before the next one is asked for.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# torch dtype name -> (safetensors dtype, bytes per element)
_DTYPES = {
    "float64": ("F64", 8), "float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2),
    "int64": ("I64", 8), "int32": ("I32", 4), "int16": ("I16", 2), "int8": ("I8", 1),
    "uint64": ("U64", 8), "uint32": ("U32", 4), "uint16": ("U16", 2), "uint8": ("U8", 1), "bool": ("BOOL", 1),
    "float8_e4m3fn": ("F8_E4M3", 1), "float8_e5m2": ("F8_E5M2", 1),
}


@dataclass(frozen=True)
class Entry:
    """One tensor of the file: its name, what it will be, and how to produce it (called once, when written)."""

    name: str
    shape: tuple[int, ...]
    dtype: Any  # a torch.dtype
    load: Callable[[], Any]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _dtype_info(self.dtype)[1]


def _dtype_info(dtype: Any) -> tuple[str, int]:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"safetensors has no dtype for {dtype}")
    return _DTYPES[name]


def header_bytes(entries: Iterable[Entry], metadata: dict[str, str] | None = None) -> bytes:
    """The length prefix and the JSON header (padded to a multiple of 8) for `entries`, in their order."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for entry in entries:
        if entry.name in header:
            raise ValueError(f"tensor name {entry.name!r} appears twice")
        header[entry.name] = {"dtype": _dtype_info(entry.dtype)[0], "shape": [int(d) for d in entry.shape],
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data that follows starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def write_file(path: str | Path, entries: list[Entry], metadata: dict[str, str] | None = None) -> int:
    """Write `entries` to `path` (as given: the caller picks a temporary name and renames). Returns bytes of data."""
    import torch

    if sys.byteorder != "little":  # the format is little-endian; raw tensor bytes are written as they lie
        raise OSError("streamed safetensors writing needs a little-endian machine")
    written = 0
    with open(path, "wb") as f:
        f.write(header_bytes(entries, metadata))
        for entry in entries:
            tensor = entry.load()
            if tuple(tensor.shape) != tuple(entry.shape) or tensor.dtype != entry.dtype:
                raise ValueError(f"tensor {entry.name!r} is {tensor.dtype}{tuple(tensor.shape)}, its header says "
                                 f"{entry.dtype}{tuple(entry.shape)}")
            if tensor.numel():
                flat = tensor.detach().contiguous().reshape(-1)
                f.write(memoryview(flat.view(torch.uint8).numpy()))
                written += flat.numel() * flat.element_size()
            del tensor  # the only reference: freed before the next tensor is produced
    return written


def tensor_entry(name: str, source: Any, transpose: bool = False, dtype: Any = None) -> Entry:
    """An Entry from a tensor, or a lazy one (`shape`, `dtype` and `materialize()`), optionally transposed (2-D)."""
    shape = tuple(int(d) for d in source.shape)
    if transpose:
        shape = tuple(reversed(shape))
    out_dtype = dtype if dtype is not None else source.dtype

    def load() -> Any:
        tensor = source.materialize() if hasattr(source, "materialize") else source
        tensor = tensor.to(out_dtype)
        return (tensor.t() if transpose else tensor).contiguous()

    return Entry(name, shape, out_dtype, load)
