"""Parquet and Arrow IPC (``.arrow``/``.feather``) files: one field per column.

Input is one file, a directory of them (sorted by relative path; all must have the same
columns), a glob or a brace pattern, local or at any fsspec URL (see :mod:`.arrow_files`).
Field types come from the Arrow schema (see :mod:`.arrow_types`). Tasks are runs of
consecutive row groups (Parquet) or record batches (Arrow IPC) of about ``shard_size``
compressed input bytes. Fields are not nullable: a null is a bad record naming file, row and
column.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..errors import ConvertError, SourceRecordError
from ..format.schema import Schema
from ..io.inputs import InputFile, Inputs
from .arrow_files import IPC_SUFFIXES, PARQUET_SUFFIXES, WHOLE_FILE, describe_file, read_units
from .arrow_types import column_values, field_type, null_rows
from .base import Consumed, ReadItem, Source, Task, as_inputs, check_field_name, list_files, pack

__all__ = ["ParquetSource", "ParquetPiece", "ParquetTask", "SUFFIXES"]

SUFFIXES = PARQUET_SUFFIXES + IPC_SUFFIXES


@dataclass(frozen=True)
class ParquetPiece:
    """Row groups (or IPC record batches) ``[start, stop)`` of one file."""

    file: InputFile
    start: int
    stop: int
    first_row: int  # the file's row number of the piece's first row
    rows: int  # WHOLE_FILE: not known before it is read (then it is the whole file)
    size: int

    @property
    def path(self) -> str:
        return self.file.path


@dataclass(frozen=True)
class ParquetTask(Task):
    pieces: tuple[ParquetPiece, ...]

    def describe(self) -> str:
        a, b = self.pieces[0], self.pieces[-1]
        if b.rows == WHOLE_FILE:
            return a.path if a is b else f"{a.path} from row {a.first_row} to {b.path}"
        last = b.first_row + b.rows - 1
        if a.path == b.path:
            return f"{a.path} rows {a.first_row}..{last}"
        return f"{a.path} from row {a.first_row} to {b.path} row {last}"


class ParquetSource(Source):
    """Parquet / Arrow IPC tables; see the module docstring."""

    name = "parquet"

    def __init__(self, src: str | os.PathLike | Inputs, *, shard_size: int) -> None:
        self.inputs = as_inputs(src)
        self.src = self.inputs.src
        self.shard_size = shard_size
        listed = list_files(self.inputs, SUFFIXES, what="Parquet/Arrow")
        self.files = [f.path for f in listed]
        # Footers of every file, read once here (concurrently when remote).
        self._described = self.inputs.map(lambda f: describe_file(self.inputs, f), listed)
        first = self._described[0]
        self._schema = _fastload_schema(first.schema, first.file.path)

    def schema(self) -> Schema:
        return self._schema

    def tasks(self) -> list[Task]:
        pieces = [p for d in self._described for p in self._pieces(d)]
        groups = pack(pieces, [p.size for p in pieces], self.shard_size)
        return [ParquetTask(sum(p.size for p in g), _merge(g)) for g in groups]

    def _pieces(self, d) -> list[ParquetPiece]:
        """One piece per row group / record batch of a file, checking its schema matches."""
        schema = _fastload_schema(d.schema, d.file.path)
        if schema != self._schema:
            raise ConvertError(
                f"{d.file.path}: its columns {schema.to_dict()} differ from those of "
                f"{self.files[0]}: {self._schema.to_dict()}"
            )
        if d.rows == (WHOLE_FILE,):
            return [ParquetPiece(d.file, 0, 1, 0, WHOLE_FILE, d.sizes[0])]
        starts = np.concatenate([[0], np.cumsum(d.rows)]).tolist()
        return [
            ParquetPiece(d.file, i, i + 1, starts[i], d.rows[i], d.sizes[i])
            for i in range(len(d.rows))
            if d.rows[i]
        ]

    def read(self, task: ParquetTask) -> Iterator[ReadItem]:
        names = self._schema.names
        specs = [f.spec for f in self._schema]
        for piece in task.pieces:
            row = piece.first_row
            reported = 0
            for batch in read_units(
                self.inputs, piece.file, piece.start, piece.stop, piece.rows, piece.size
            ):
                yield from _batch_records(batch, names, specs, piece.path, row)
                row += batch.num_rows
                if piece.rows != WHOLE_FILE:  # the piece's bytes read, by rows
                    done = piece.size * (row - piece.first_row) // max(1, piece.rows)
                    yield Consumed(done - reported)
                    reported = done
            yield Consumed(piece.size - reported)


def _merge(pieces: list[ParquetPiece]) -> tuple[ParquetPiece, ...]:
    """Join consecutive pieces of one file, so a task reads each file in one pass."""
    out: list[ParquetPiece] = []
    for p in pieces:
        last = out[-1] if out else None
        if last is not None and last.path == p.path and last.stop == p.start:
            out[-1] = ParquetPiece(
                p.file, last.start, p.stop, last.first_row, last.rows + p.rows, last.size + p.size
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


def _fastload_schema(schema: pa.Schema, path: str) -> Schema:
    fields = {}
    for field in schema:
        check_field_name(field.name, f"{path}: column")
        fields[field.name] = field_type(field.name, field.type, path)
    return Schema(fields)
