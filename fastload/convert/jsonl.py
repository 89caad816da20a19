"""JSON Lines (``.jsonl``, ``.ndjson``, optionally gzipped): one field per key.

The schema is inferred from the first ``infer_lines`` lines: per key, ints -> int64, floats (or
ints mixed with floats) -> float64, bools -> bool, strings -> str, lists of ints (token ids,
say) -> int64[?] and lists of numbers -> float64[?] (variable-length arrays, which the loader
can pad or pack), anything else or a mix -> json. A key missing from some of those lines
becomes a json field that holds null where the key is absent. Fields keep the order in which
keys were first seen.

A later line that does not fit (invalid JSON, not an object, a missing or unknown key, a value
of the wrong type) is a bad record naming the file and line number. Plain files are split into
tasks at line boundaries; a gzipped file is one task. Files may be remote (any fsspec URL): a
task then reads its byte range of the file, in large ranged GETs.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Callable

import numpy as np

from ..errors import ConvertError, SourceRecordError
from ..format.schema import Schema
from ..io.inputs import Inputs
from .base import Consumed, ReadItem, Source, Task, as_inputs, check_field_name, list_files, pack

__all__ = ["JsonlSource", "JsonlPiece", "JsonlTask", "infer_schema", "SUFFIXES"]

SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_INT64 = (-(1 << 63), (1 << 63) - 1)
_REPORT_BYTES = 1 << 20  # progress is reported every this many bytes read
_PROBE_BYTES = 64 << 10
# The list kinds (_json_type) a value of each inferred array type may be.
_LISTS = {"int64[?]": {"list[]", "list[int]"}, "float64[?]": {"list[]", "list[int]", "list[num]"}}
_LIST_NAMES = {
    "list[]": "an empty list",
    "list[int]": "a list of ints",
    "list[num]": "a list of numbers",
    "list": "a list of other values",
}
# The Python types a value of each inferred field type may have.
_ALLOWED: dict[str, tuple[type, ...]] = {
    "int64": (int,),
    "float64": (float, int),
    "bool": (bool,),
    "str": (str,),
}


@dataclass(frozen=True)
class JsonlPiece:
    """Bytes ``[start, stop)`` of one file, cut at line starts (``stop=-1``: to the end)."""

    path: str
    start: int
    stop: int
    size: int


@dataclass(frozen=True)
class JsonlTask(Task):
    pieces: tuple[JsonlPiece, ...]

    def describe(self) -> str:
        p = self.pieces[0]
        more = f" and {len(self.pieces) - 1} more pieces" if len(self.pieces) > 1 else ""
        return f"{p.path} from byte {p.start}{more}"


class JsonlSource(Source[JsonlTask]):
    """JSON Lines files; see the module docstring."""

    name = "jsonl"

    def __init__(
        self, src: str | os.PathLike | Inputs, *, shard_size: int, infer_lines: int = 1000
    ) -> None:
        if infer_lines < 1:
            raise ConvertError(f"infer_lines must be at least 1, got {infer_lines}")
        self.shard_size = shard_size
        self.inputs = as_inputs(src)
        listed = list_files(self.inputs, SUFFIXES, what="JSON Lines")
        self.files = [f.path for f in listed]
        self._sizes = {f.path: f.size for f in listed}
        self._schema, self.optional = infer_schema(self.files, infer_lines, self._open)
        # Each typed field's allowed Python types; json fields accept any value.
        self._checks = [
            (f.name, f.spec, _ALLOWED[f.spec]) for f in self._schema if f.spec in _ALLOWED
        ]
        self._arrays = [(f.name, f.spec, f.np_dtype) for f in self._schema if f.kind == "ndarray"]
        self._keys = frozenset(self._schema.names)
        self._required = self._keys - self.optional

    def schema(self) -> Schema:
        return self._schema

    def tasks(self) -> list[JsonlTask]:
        pieces = [
            p
            for path in self.files
            for p in split_lines(path, self.shard_size, self._open, self._sizes[path])
        ]
        groups = pack(pieces, [p.size for p in pieces], self.shard_size)
        return [JsonlTask(sum(p.size for p in g), tuple(g)) for g in groups]

    def read(self, task: JsonlTask) -> Iterator[ReadItem]:
        for piece in task.pieces:
            yield from self._read_piece(piece)

    def _open(self, path: str, buffer_size: int | None = None) -> IO[bytes]:
        """``path`` (uncompressed if it ends in .gz), through the inputs' filesystem."""
        kwargs = {} if buffer_size is None else {"buffer_size": buffer_size}
        raw: IO[bytes] = self.inputs.open(path, size=self._sizes.get(path), **kwargs)
        if path.lower().endswith(".gz"):
            # typeshed's io classes (GzipFile here) are not typing.IO, though they are files
            return gzip.GzipFile(fileobj=raw, mode="rb")  # pyright: ignore[reportReturnType]
        return raw

    def _read_piece(self, piece: JsonlPiece) -> Iterator[ReadItem]:
        first_line: int | None = None  # counted only when an error needs it
        raw = self.inputs.open(piece.path, size=self._sizes.get(piece.path))
        gz = piece.path.lower().endswith(".gz")
        with raw, gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw as f:
            f.seek(piece.start)
            pos = reported = piece.start
            for i, line in enumerate(f):
                if piece.stop >= 0 and pos >= piece.stop:
                    break
                pos += len(line)
                read = raw.tell() if gz else pos  # bytes of the file, compressed or not
                if read - reported >= _REPORT_BYTES:
                    yield Consumed(read - reported)
                    reported = read
                if not line.strip():
                    continue
                record, problem = self._parse(line)
                if record is not None:
                    yield record
                    continue
                if first_line is None:
                    first_line = _count_lines(self._open(piece.path), piece.start) + 1
                yield SourceRecordError(f"{piece.path} line {first_line + i}: {problem}")

    def _parse(self, line: bytes) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, None)`` for a line that fits the schema, else ``(None, why not)``."""
        try:
            obj = json.loads(line)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            return None, f"invalid JSON ({e})"
        if type(obj) is not dict:
            return None, f"not a JSON object but {type(obj).__name__}"
        record: dict[str, Any] = obj
        if record.keys() != self._keys:
            problem = self._key_problem(record)
            if problem:
                return None, problem
            record = {k: record.get(k) for k in self._schema.names}  # optional keys -> null
        for name, spec, allowed in self._checks:
            value = record[name]
            if type(value) not in allowed:
                return None, (
                    f"key {name!r} is {_describe(value)}, but the schema (inferred "
                    f"from the first lines) says {spec}"
                )
            if spec == "int64" and not _INT64[0] <= value <= _INT64[1]:
                return None, f"key {name!r}: {value} does not fit in int64"
        for name, spec, dtype in self._arrays:
            value = record[name]
            if _json_type(value) not in _LISTS[spec]:
                return None, (
                    f"key {name!r} is {_describe(value)}, but the schema (inferred "
                    f"from the first lines) says {spec}"
                )
            record[name] = np.array(value, dtype)
        return record, None

    def _key_problem(self, obj: dict[str, Any]) -> str | None:
        unknown = [k for k in obj if k not in self._schema]
        missing = sorted(self._required - obj.keys())
        if not unknown and not missing:
            return None
        parts = ([f"unknown keys {unknown}"] if unknown else []) + (
            [f"missing keys {missing}"] if missing else []
        )
        return (
            f"{' and '.join(parts)}; the schema (inferred from the first lines) has keys "
            f"{self._schema.names}"
        )


def infer_schema(
    files: list[str], n_lines: int, opener: Callable[[str], IO[bytes]] | None = None
) -> tuple[Schema, frozenset[str]]:
    """The schema of the first ``n_lines`` parseable object lines, and its optional keys
    (``opener(path)`` opens a file, uncompressed; default: local files)."""
    opener = opener or _open
    kinds: dict[str, set[str]] = {}  # key -> JSON types seen, keys in first-seen order
    counts: dict[str, int] = {}
    seen = 0
    for path in files:
        with opener(path) as f:
            for line in f:
                if seen >= n_lines:
                    break
                try:
                    obj = json.loads(line) if line.strip() else None
                except ValueError:
                    continue  # reported when the line is read
                if type(obj) is not dict:
                    continue
                seen += 1
                for key, value in obj.items():
                    kinds.setdefault(key, set()).add(_json_type(value))
                    counts[key] = counts.get(key, 0) + 1
        if seen >= n_lines:
            break
    if not kinds:
        raise ConvertError(f"{files[0]}: no JSON object lines to infer a schema from")
    optional = frozenset(k for k, n in counts.items() if n < seen)
    fields = {
        check_field_name(k, f"{files[0]}: key"): "json" if k in optional else _spec(kinds[k])
        for k in kinds
    }
    return Schema(fields), optional


def _spec(kinds: set[str]) -> str:
    if kinds <= _LISTS["float64[?]"] and kinds != {"list[]"}:
        return "int64[?]" if kinds <= _LISTS["int64[?]"] else "float64[?]"
    if kinds == {"int"}:
        return "int64"
    if kinds <= {"int", "float"}:
        return "float64"
    if kinds == {"bool"}:
        return "bool"
    if kinds == {"str"}:
        return "str"
    return "json"


def _json_type(value: Any) -> str:
    t = type(value)
    if t is int:
        return "int" if _INT64[0] <= value <= _INT64[1] else "bigint"
    if t is list:
        return _list_type(value)
    return {bool: "bool", float: "float", str: "str", dict: "dict"}.get(t, "null")


def _describe(value: Any) -> str:
    kind = _json_type(value)
    return _LIST_NAMES.get(kind, kind)


def _list_type(value: list) -> str:
    """ "list[]" (empty), "list[int]" (int64 ints), "list[num]" (ints and floats) or "list"."""
    if not value:
        return "list[]"
    types = set(map(type, value))
    if types == {int}:
        return "list[int]" if _INT64[0] <= min(value) and max(value) <= _INT64[1] else "list"
    return "list[num]" if types <= {int, float} else "list"


def split_lines(
    path: str,
    target: int,
    opener: Callable[..., IO[bytes]] | None = None,
    size: int | None = None,
) -> list[JsonlPiece]:
    """A file cut into pieces of about ``target`` bytes at line starts (gzip: one piece).
    ``opener(path, buffer_size)`` opens it (default: a local file)."""
    size = os.path.getsize(path) if size is None else size
    if path.lower().endswith(".gz"):
        return [JsonlPiece(path, 0, -1, size)] if size else []
    # Each cut reads from a target offset to the end of its line: small reads, not 4 MiB.
    f = opener(path, _PROBE_BYTES) if opener else open(path, "rb")
    with f:
        cuts = [0]
        while cuts[-1] + target < size:
            f.seek(cuts[-1] + target - 1)
            f.readline()  # to the end of the line holding the target offset
            cuts.append(f.tell())
        if cuts[-1] < size:
            cuts.append(size)
    return [JsonlPiece(path, a, b, b - a) for a, b in zip(cuts, cuts[1:])]


def _count_lines(f: IO[bytes], end: int) -> int:
    """The number of newlines in the first ``end`` bytes of an open file (closed after)."""
    n, left = 0, end
    with f:
        while left > 0:
            chunk = f.read(min(left, 16 << 20))
            if not chunk:
                break
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


def _open(path: str) -> IO[bytes]:
    if path.lower().endswith(".gz"):
        # typeshed's io classes (GzipFile here) are not typing.IO, though they are files
        return gzip.open(path, "rb")  # pyright: ignore[reportReturnType]
    return open(path, "rb")
