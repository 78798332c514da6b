"""The text `orch data prepare` reads: inputs (local files and folders, s3:// objects and prefixes) resolved into
files, files cut into work units, and a unit's documents read back, local or by ranged S3 reads.

Formats by suffix: `.txt` (a file is one document; a file larger than a unit is cut at line boundaries, each
piece then being a document of its own), `.jsonl` (one document per line, in field `text_field`) and `.parquet`
(column `text_field`, one unit per file). Torch-free: the control plane plans and checks with it, Ray tasks read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.core.errors import OrchError
from orchestrator.storage import ObjectStore, open_store

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
PIECE_BYTES = 1 << 20  # a .txt unit is tokenized in pieces of about this many bytes of whole lines
READ_BYTES = 1 << 20


class InputError(OrchError):
    """An input that cannot be prepared; the message names it and the fix."""


@dataclass(frozen=True)
class InputFile:
    uri: str  # an absolute local path or s3://bucket/key
    size: int
    fmt: str
    version: str  # mtime (and etag-free size) as seen now: a changed file is a different unit on a rerun


@dataclass(frozen=True)
class WorkUnit:
    unit: int
    uri: str
    fmt: str
    start: int  # byte range [start, end) of the file; lines are owned by the unit their first byte falls in
    end: int
    size: int
    version: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _format_of(name: str) -> str | None:
    return FORMATS.get(os.path.splitext(name)[1].lower())


def _known() -> str:
    return ", ".join(sorted(FORMATS))


def _split_s3(uri: str) -> tuple[ObjectStore, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InputError(f"input {uri}: an S3 input needs a bucket, like s3://bucket/corpus/ or "
                         "s3://bucket/file.jsonl. Fix the input.")
    return open_store(f"s3://{bucket}"), key.strip("/")


def resolve_inputs(inputs: list[str]) -> list[InputFile]:
    """Every input file, in the order given (folders and prefixes sorted by name); refuses what cannot be read."""
    if not inputs:
        raise InputError("No input given. Name one or more .txt, .jsonl or .parquet files, folders or s3:// "
                         "prefixes: orch data prepare corpus/ --out s3://bucket/data --vocab-size 32000")
    files: list[InputFile] = []
    for given in inputs:
        found = _resolve_s3(given) if given.startswith("s3://") else _resolve_local(given)
        empty = [f.uri for f in found if f.size == 0]
        if empty:
            raise InputError(f"input {empty[0]} is empty: there is nothing to tokenize in it. Remove it from the "
                             "inputs (or fill it).")
        files += found
    seen: set[str] = set()
    for f in files:
        if f.uri in seen:
            raise InputError(f"input {f.uri} is named twice (directly or through a folder); name it once.")
        seen.add(f.uri)
    return files


def _resolve_local(given: str) -> list[InputFile]:
    path = Path(given).expanduser().absolute()
    if not path.exists():
        raise InputError(f"input {given}: no such file or folder. Check the path (inputs are local files or "
                         "folders, or s3://bucket/prefix).")
    if path.is_dir():
        names = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p.name))
        if not names:
            raise InputError(f"input {given} is a folder with no {_known()} file in it (folders are searched "
                             "recursively). Name a folder that holds the corpus.")
        candidates = names
    else:
        if _format_of(path.name) is None:
            raise InputError(f"input {given}: unknown file type {path.suffix or '(no suffix)'!r}; supported are "
                             f"{_known()}. Rename it or convert it to one of them.")
        candidates = [path]
    return [InputFile(uri=str(p), size=p.stat().st_size, fmt=str(_format_of(p.name)),
                      version=str(p.stat().st_mtime_ns)) for p in candidates]


def _resolve_s3(given: str) -> list[InputFile]:
    store, key = _split_s3(given)
    if key and store.exists(key):
        fmt = _format_of(key)
        if fmt is None:
            raise InputError(f"input {given}: unknown file type; supported are {_known()}. Rename the object or "
                             "convert it to one of them.")
        # The store lists folders, not single keys: the object's own entry in its folder gives size and time.
        info = next(o for o in store.list(key.rpartition("/")[0]) if o.key == key)
        return [InputFile(f"{store.uri}/{key}", info.size, fmt, info.mtime.isoformat())]
    objects = [o for o in store.list(key) if _format_of(o.key)]
    if not objects:
        raise InputError(f"input {given}: no such object, and no {_known()} object under it as a prefix. Check "
                         "the bucket and key.")
    return [InputFile(f"{store.uri}/{o.key}", o.size, str(_format_of(o.key)), o.mtime.isoformat())
            for o in objects]


def plan_units(files: list[InputFile], unit_bytes: int) -> list[WorkUnit]:
    """Work units in a fixed order: line-based files cut every `unit_bytes`, Parquet files whole."""
    units: list[WorkUnit] = []
    for f in files:
        cuts = [0] if f.fmt == "parquet" else list(range(0, f.size, unit_bytes))
        for i, start in enumerate(cuts):
            end = cuts[i + 1] if i + 1 < len(cuts) else f.size
            units.append(WorkUnit(len(units), f.uri, f.fmt, start, end, f.size, f.version))
    return units


# ---- reading ---------------------------------------------------------------------------------------------
@contextmanager
def _opened(uri: str, start: int) -> Iterator[Any]:
    """A binary stream of the file from byte `start` (a ranged GET on S3: no unit reads the whole object)."""
    if not uri.startswith("s3://"):
        with open(uri, "rb") as fh:
            fh.seek(start)
            yield fh
        return
    store, key = _split_s3(uri)
    yield _RangedReader(store, key, start)


class _RangedReader:
    """A forward-only stream of an object from byte `start`, one ranged GET per read: no unit reads the whole
    object, and any S3-compatible server serves it (the store's own retries and error messages apply)."""

    def __init__(self, store: ObjectStore, key: str, start: int):
        self.store, self.key, self.pos = store, key, start

    def read(self, size: int) -> bytes:
        data = self.store.get_range(self.key, self.pos, size)
        self.pos += len(data)
        return data


def _lines(uri: str, start: int, end: int) -> Iterator[bytes]:
    """The lines whose first byte lies in [start, end), each with its newline (Hadoop's split rule: a unit after
    the first skips the rest of the line that began before it, and reads on past `end` to finish its last)."""
    begin = max(start - 1, 0)
    with _opened(uri, begin) as stream:
        pos, skip, rest = begin, start > 0, b""
        while True:
            chunk = stream.read(READ_BYTES)
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()  # an unfinished line waits for the next chunk
            lines = [p + b"\n" for p in parts]
            if not chunk and rest:
                lines.append(rest)
            for line in lines:
                if skip:  # the rest of the line that began in the previous unit
                    skip = False
                elif pos >= end:
                    return
                else:
                    yield line
                pos += len(line)
            if not chunk:
                return


def iter_pieces(unit: WorkUnit, text_field: str) -> Iterator[tuple[str, bool]]:
    """(text, ends a document) pairs of one unit, in order; a .txt unit is one document in pieces."""
    if unit.fmt == "txt":
        yield from _txt_pieces(unit)
    elif unit.fmt == "jsonl":
        for number, line in enumerate(_lines(unit.uri, unit.start, unit.end)):
            text = _jsonl_text(line, unit, number, text_field)
            if text is not None:
                yield text, True
    else:
        for text in _parquet_texts(unit.uri, text_field):
            yield text, True


def _txt_pieces(unit: WorkUnit) -> Iterator[tuple[str, bool]]:
    piece: list[bytes] = []
    size, seen = 0, False
    for line in _lines(unit.uri, unit.start, unit.end):
        piece.append(line)
        size += len(line)
        seen = True
        if size >= PIECE_BYTES:
            yield b"".join(piece).decode("utf-8", errors="replace"), False
            piece, size = [], 0
    if seen:  # a unit where no line starts (one long line began before it) holds no document
        yield b"".join(piece).decode("utf-8", errors="replace"), True


def _jsonl_text(line: bytes, unit: WorkUnit, number: int, text_field: str) -> str | None:
    if not line.strip():
        return None
    where = f"input {unit.uri} (a line of the byte range {unit.start}-{unit.end}, line {number + 1} of it)"
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise InputError(f"{where} is not JSON ({exc}). Each line of a .jsonl file must be one JSON object; "
                         "fix or remove that line.") from None
    if not isinstance(record, dict) or text_field not in record:
        raise InputError(f"{where} has no {text_field!r} field. Name the field that holds the text with "
                         "--text-field FIELD.")
    text = record[text_field]
    if not isinstance(text, str):
        raise InputError(f"{where}: field {text_field!r} is {type(text).__name__}, not text. Name a text field "
                         "with --text-field.")
    return text


@contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path holding the file (downloaded to a temporary folder when it lives in S3)."""
    if not uri.startswith("s3://"):
        yield uri
        return
    store, key = _split_s3(uri)
    with tempfile.TemporaryDirectory(prefix="orch-prepare-") as tmp:
        path = os.path.join(tmp, os.path.basename(key))
        store.get_file(key, path)
        yield path


def _parquet_file(path: str, uri: str, text_field: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"input {uri}: reading Parquet needs pyarrow (pip install pyarrow).") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise InputError(f"input {uri} is not a readable Parquet file ({exc}). Fix or remove it.") from None
    if text_field not in pf.schema_arrow.names:
        raise InputError(f"input {uri} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}). "
                         "Name the text column with --text-field COLUMN.")
    return pf


def _parquet_texts(uri: str, text_field: str) -> Iterator[str]:
    with local_copy(uri) as path:
        pf = _parquet_file(path, uri, text_field)
        for batch in pf.iter_batches(columns=[text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                if text:
                    yield str(text)


def check_text_field(files: list[InputFile], text_field: str) -> None:
    """Refuse, before anything is written, a .jsonl or .parquet input whose first record lacks the field."""
    for f in files:
        if f.fmt == "jsonl":
            unit = WorkUnit(0, f.uri, f.fmt, 0, f.size, f.size, f.version)
            for number, line in enumerate(_lines(f.uri, 0, f.size)):
                if _jsonl_text(line, unit, number, text_field) is not None:
                    break
            else:
                raise InputError(f"input {f.uri} holds no JSON line: there is nothing to tokenize in it. "
                                 "Remove it from the inputs.")
        elif f.fmt == "parquet":
            with local_copy(f.uri) as path:
                _parquet_file(path, f.uri, text_field)


def sample_texts(files: list[InputFile], text_field: str, limit_bytes: int) -> Iterator[str]:
    """Documents (pieces of .txt files) from the start of every input, about `limit_bytes` in all, spread over
    the inputs: what a tokenizer is trained on."""
    share = max(limit_bytes // max(len(files), 1), PIECE_BYTES)
    for f in files:
        unit = WorkUnit(0, f.uri, f.fmt, 0, f.size, f.size, f.version)
        taken = 0
        for text, _ in iter_pieces(unit, text_field):
            yield text
            taken += len(text)
            if taken >= share:
                break
