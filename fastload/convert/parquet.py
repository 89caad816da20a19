"""Parquet and Arrow IPC (``.arrow``/``.feather``) files, Hugging Face datasets among them.

Input is one file, a directory of them (sorted by relative path; all must have the same
columns), a glob or a brace pattern, local or at any fsspec URL (see :mod:`.arrow_files`);
or a folder ``datasets.save_to_disk`` wrote, and ``split=`` picks one split of a folder
holding several (see :mod:`.hf`). Each column becomes one field (two for an HF Audio column),
typed by its Hugging Face feature where the files carry one and by its Arrow type otherwise
(see :mod:`.columns`). Tasks are runs of consecutive row groups (Parquet) or record batches
(Arrow IPC) of about ``shard_size`` compressed input bytes. Fields are not nullable: a null is
a bad record naming file, row and column.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConvertError, SourceRecordError
from ..format.schema import Schema
from ..io.inputs import InputFile, Inputs
from .arrow_files import (
    IPC_SUFFIXES,
    PARQUET_SUFFIXES,
    WHOLE_FILE,
    ArrowFile,
    describe_file,
    read_units,
    sample_columns,
)
from .base import Consumed, ReadItem, Source, Task, as_inputs, pack
from .columns import IMAGE_SAMPLE, Column, Reader, plan_columns
from .hf import resolve_layout, schema_features

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


class ParquetSource(Source[ParquetTask]):
    """Parquet / Arrow IPC tables; see the module docstring.

    ``split``: the split to convert of a folder of several (``"train"``; ``"val"`` and
    ``"dev"`` name ``"validation"``). ``image_columns``: the columns that hold images,
    overriding the features and the sampling (a list, or a comma-separated string; empty:
    none).
    """

    name = "parquet"

    def __init__(
        self,
        src: str | os.PathLike | Inputs,
        *,
        shard_size: int,
        split: str | None = None,
        image_columns: Sequence[str] | str | None = None,
    ) -> None:
        self.inputs = as_inputs(src)
        self.src = self.inputs.src
        self.shard_size = shard_size
        layout = resolve_layout(self.inputs, split, SUFFIXES)
        self.split, self.base = layout.split, layout.base
        self.files = [f.path for f in layout.files]
        # Footers of every file, read once here (concurrently when remote).
        self._described: list[ArrowFile] = self.inputs.map(
            lambda f: describe_file(self.inputs, f), layout.files
        )
        first = self._described[0]
        self._features = schema_features(first.schema) or layout.info_features
        self.columns = plan_columns(
            first.schema,
            self._features,
            image_columns=_names(image_columns),
            sample=lambda names: sample_columns(self.inputs, first.file, names, IMAGE_SAMPLE),
            where=first.file.path,
        )
        self._schema = Schema({n: spec for c in self.columns for n, spec in c.fields})

    def schema(self) -> Schema:
        return self._schema

    def classes(self) -> dict[str, list[str]] | None:
        named = {c.name: list(c.names) for c in self.columns if c.names is not None}
        return named or None

    def features(self) -> dict[str, Any] | None:
        return {c.name: c.feature for c in self.columns}

    def notes(self) -> list[str]:
        notes = []
        if self.split is not None:
            notes.append(f"parquet: split {self.split!r}: {len(self.files)} file(s)")
        images = [c.name for c in self.columns if c.kind == "image"]
        if images:
            notes.append(f"parquet: image columns {', '.join(images)}")
        for c in self.columns:
            if c.names is not None:
                shown = ", ".join(f"{i}={n}" for i, n in enumerate(c.names[:50]))
                more = f", ... ({len(c.names)} in all)" if len(c.names) > 50 else ""
                notes.append(f"parquet: column {c.name!r}: {len(c.names)} classes: {shown}{more}")
        return notes

    def tasks(self) -> list[ParquetTask]:
        pieces = [p for d in self._described for p in self._pieces(d)]
        groups = pack(pieces, [p.size for p in pieces], self.shard_size)
        return [ParquetTask(sum(p.size for p in g), _merge(g)) for g in groups]

    def _pieces(self, d: ArrowFile) -> list[ParquetPiece]:
        """One piece per row group / record batch of a file, checking its columns match."""
        self._check_columns(d)
        if d.rows == (WHOLE_FILE,):
            return [ParquetPiece(d.file, 0, 1, 0, WHOLE_FILE, d.sizes[0])]
        starts = np.concatenate([[0], np.cumsum(d.rows)]).tolist()
        return [
            ParquetPiece(d.file, i, i + 1, starts[i], d.rows[i], d.sizes[i])
            for i in range(len(d.rows))
            if d.rows[i]
        ]

    def _check_columns(self, d: ArrowFile) -> None:
        if d is self._described[0]:
            return
        images = [c.name for c in self.columns if c.kind == "image"]
        try:
            columns = plan_columns(
                d.schema,
                self._features,
                image_columns=images,
                sample=lambda names: {},
                where=d.file.path,
            )
        except ConvertError as e:
            raise ConvertError(f"{e}; its first file {self.files[0]} converts") from None
        if _fields(columns) != _fields(self.columns):
            raise ConvertError(
                f"{d.file.path}: its columns {_fields(columns)} differ from those of "
                f"{self.files[0]}: {_fields(self.columns)}"
            )

    def read(self, task: ParquetTask) -> Iterator[ReadItem]:
        reader = Reader(self.columns, self.inputs, self.base)
        for piece in task.pieces:
            row = piece.first_row
            reported = 0
            for batch in read_units(
                self.inputs, piece.file, piece.start, piece.stop, piece.rows, piece.size
            ):
                records, problems = reader.rows(batch)
                for r in sorted(problems):
                    yield SourceRecordError(f"{piece.path}: row {row + r}: {problems[r]}")
                for _, record in records:
                    yield record
                row += batch.num_rows
                if piece.rows != WHOLE_FILE:  # the piece's bytes read, by rows
                    done = piece.size * (row - piece.first_row) // max(1, piece.rows)
                    yield Consumed(done - reported)
                    reported = done
            yield Consumed(piece.size - reported)


def _names(columns: Sequence[str] | str | None) -> list[str] | None:
    """``image_columns`` as a list: a comma-separated string (the CLI's) is split."""
    if columns is None or not isinstance(columns, str):
        return None if columns is None else list(columns)
    return [c.strip() for c in columns.split(",") if c.strip()]


def _fields(columns: list[Column]) -> dict[str, str]:
    return {n: spec for c in columns for n, spec in c.fields}


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
