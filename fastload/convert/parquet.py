"""Parquet and Arrow IPC (``.arrow``/``.feather``) files: one field per column.

Input is one file or a directory of them (sorted by relative path; all must have the same
columns). Field types come from the Arrow schema (see :mod:`.arrow_types`). Tasks are runs of
consecutive row groups (Parquet) or record batches (Arrow IPC) of about ``shard_size``
compressed input bytes. Fields are not nullable: a null is a bad record naming file, row and
column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConvertError, SourceRecordError
from ..format.schema import Schema
from .arrow_types import column_values, field_type, null_rows
from .base import ReadItem, Source, Task, check_field_name, list_files, pack

__all__ = ["ParquetSource", "ParquetPiece", "ParquetTask", "SUFFIXES"]

PARQUET_SUFFIXES = (".parquet", ".pq")
IPC_SUFFIXES = (".arrow", ".feather", ".ipc")
SUFFIXES = PARQUET_SUFFIXES + IPC_SUFFIXES
# Rows per batch are chosen so a batch holds about this many bytes: big enough that per-batch
# costs vanish, small enough that image columns do not fill memory.
_BATCH_BYTES = 32 << 20


@dataclass(frozen=True)
class ParquetPiece:
    """Row groups (or IPC record batches) ``[start, stop)`` of one file."""

    path: str
    start: int
    stop: int
    first_row: int  # the file's row number of the piece's first row
    rows: int
    size: int


@dataclass(frozen=True)
class ParquetTask(Task):
    pieces: tuple[ParquetPiece, ...]

    def describe(self) -> str:
        a, b = self.pieces[0], self.pieces[-1]
        last = b.first_row + b.rows - 1
        if a.path == b.path:
            return f"{a.path} rows {a.first_row}..{last}"
        return f"{a.path} from row {a.first_row} to {b.path} row {last}"


class ParquetSource(Source):
    """Parquet / Arrow IPC tables; see the module docstring."""

    name = "parquet"

    def __init__(self, src: str, *, shard_size: int) -> None:
        self.src = src
        self.shard_size = shard_size
        self.files = list_files(src, SUFFIXES, what="Parquet/Arrow")
        self._schema = _fastload_schema(_arrow_schema(self.files[0]), self.files[0])

    def schema(self) -> Schema:
        return self._schema

    def tasks(self) -> list[Task]:
        pieces = [p for path in self.files for p in self._pieces(path)]
        groups = pack(pieces, [p.size for p in pieces], self.shard_size)
        return [ParquetTask(sum(p.size for p in g), _merge(g)) for g in groups]

    def _pieces(self, path: str) -> list[ParquetPiece]:
        """One piece per row group / record batch of ``path``, checking its schema matches."""
        schema = _fastload_schema(_arrow_schema(path), path)
        if schema != self._schema:
            raise ConvertError(
                f"{path}: its columns {schema.to_dict()} differ from those of "
                f"{self.files[0]}: {self._schema.to_dict()}"
            )
        sizes, rows = _unit_sizes(path)
        starts = np.concatenate([[0], np.cumsum(rows)]).tolist()
        return [
            ParquetPiece(path, i, i + 1, starts[i], rows[i], sizes[i])
            for i in range(len(rows))
            if rows[i]
        ]

    def read(self, task: ParquetTask) -> Iterator[ReadItem]:
        names = self._schema.names
        specs = [f.spec for f in self._schema]
        for piece in task.pieces:
            row = piece.first_row
            for batch in _batches(piece):
                yield from _batch_records(batch, names, specs, piece.path, row)
                row += batch.num_rows


def _merge(pieces: list[ParquetPiece]) -> tuple[ParquetPiece, ...]:
    """Join consecutive pieces of one file, so a task reads each file in one pass."""
    out: list[ParquetPiece] = []
    for p in pieces:
        last = out[-1] if out else None
        if last is not None and last.path == p.path and last.stop == p.start:
            out[-1] = ParquetPiece(
                p.path, last.start, p.stop, last.first_row, last.rows + p.rows, last.size + p.size
            )
        else:
            out.append(p)
    return tuple(out)


def _batch_records(
    batch: pa.RecordBatch, names: list[str], specs: list[str], path: str, first_row: int
) -> Iterator[ReadItem]:
    """The records of one batch; rows with nulls come out first, as errors."""
    masks = [(name, null_rows(batch.column(i))) for i, name in enumerate(names)]
    bad = np.zeros(batch.num_rows, bool)
    for name, mask in masks:
        if mask is not None:
            for r in np.flatnonzero(mask & ~bad):
                yield SourceRecordError(
                    f"{path}: row {first_row + int(r)}: column {name!r} is null (or holds a null "
                    "number); fastload fields are not nullable: fill or drop nulls first"
                )
            bad |= mask
    if bad.any():
        batch = batch.filter(pa.array(~bad))
    columns = [column_values(batch.column(i), spec) for i, spec in enumerate(specs)]
    for values in zip(*columns):
        yield dict(zip(names, values))


def _arrow_schema(path: str) -> pa.Schema:
    try:
        if path.lower().endswith(PARQUET_SUFFIXES):
            return pq.read_schema(path)
        return _open_ipc(path).schema
    except (OSError, pa.ArrowException) as e:
        raise ConvertError(f"{path}: cannot read as Parquet/Arrow: {e}") from None


def _fastload_schema(schema: pa.Schema, path: str) -> Schema:
    fields = {}
    for field in schema:
        check_field_name(field.name, f"{path}: column")
        fields[field.name] = field_type(field.name, field.type, path)
    return Schema(fields)


def _unit_sizes(path: str) -> tuple[list[int], list[int]]:
    """``(compressed bytes, rows)`` of each row group (Parquet) or record batch (Arrow IPC)."""
    if path.lower().endswith(PARQUET_SUFFIXES):
        meta = pq.ParquetFile(path).metadata
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        sizes = [
            sum(g.column(j).total_compressed_size for j in range(g.num_columns)) for g in groups
        ]
        return sizes, [g.num_rows for g in groups]
    batches = _ipc_batches(path)
    return [b.nbytes for b in batches], [b.num_rows for b in batches]


def _batches(piece: ParquetPiece) -> Iterator[pa.RecordBatch]:
    """The record batches of one piece, each of about _BATCH_BYTES."""
    if piece.path.lower().endswith(PARQUET_SUFFIXES):
        f = pq.ParquetFile(piece.path)
        rows = max(1, piece.rows)
        batch_rows = int(np.clip(_BATCH_BYTES * rows // max(1, piece.size), 16, 65536))
        yield from f.iter_batches(
            batch_size=batch_rows, row_groups=range(piece.start, piece.stop), use_threads=False
        )
    else:
        yield from _ipc_batches(piece.path)[piece.start : piece.stop]


def _open_ipc(path: str):
    """An Arrow IPC file reader, or a stream reader (Hugging Face writes .arrow as streams)."""
    source = pa.memory_map(path)
    try:
        return pa.ipc.open_file(source)
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.memory_map(path))


def _ipc_batches(path: str) -> list[pa.RecordBatch]:
    """Every record batch of an IPC file; zero-copy views of the memory-mapped file."""
    reader = _open_ipc(path)
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        return [reader.get_batch(i) for i in range(reader.num_record_batches)]
    return list(reader)
