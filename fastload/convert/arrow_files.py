"""Parquet and Arrow IPC files, local or remote: their schema, their units (row groups, record
batches) and the batches of a run of units.

A local file is read as a file (IPC memory-mapped). A remote Parquet file is read through
ranged GETs: its footer, then the column chunks of the row groups asked for (coalesced into
one GET per row group where they are adjacent), never the whole file. An IPC stream (what
Hugging Face ``datasets`` writes) has no index to seek by, so a remote one is one unit, read
in order; a remote IPC file is read by its footer's index.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConvertError
from ..io.inputs import InputFile, Inputs

__all__ = [
    "PARQUET_SUFFIXES",
    "IPC_SUFFIXES",
    "ArrowFile",
    "describe_file",
    "read_units",
    "sample_columns",
    "WHOLE_FILE",
]

PARQUET_SUFFIXES = (".parquet", ".pq")
IPC_SUFFIXES = (".arrow", ".feather", ".ipc")
# Rows per batch are chosen so a batch holds about this many bytes: big enough that per-batch
# costs vanish, small enough that image columns do not fill memory.
_BATCH_BYTES = 32 << 20
#: ``rows`` of a unit whose row count is not known before it is read (a remote IPC stream).
WHOLE_FILE = -1


@dataclass(frozen=True)
class ArrowFile:
    """One file's schema and units: ``sizes[i]`` input bytes and ``rows[i]`` rows (or
    WHOLE_FILE) of its unit ``i``."""

    file: InputFile
    schema: pa.Schema
    sizes: tuple[int, ...]
    rows: tuple[int, ...]


def is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIXES)


def describe_file(inputs: Inputs, f: InputFile) -> ArrowFile:
    """The schema and units of ``f``; ConvertError naming it if it is neither format."""
    try:
        if is_parquet(f.path):
            meta = _parquet_file(inputs, f).metadata
            groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
            sizes = [
                sum(g.column(j).total_compressed_size for j in range(g.num_columns)) for g in groups
            ]
            return ArrowFile(
                f, meta.schema.to_arrow_schema(), tuple(sizes), tuple(g.num_rows for g in groups)
            )
        if not inputs.local:
            with inputs.open(f.path, size=f.size) as fh:
                schema = _open_ipc_reader(fh).schema
            return ArrowFile(f, schema, (f.size,), (WHOLE_FILE,))
        batches = _ipc_batches(f.path)
        schema = _open_ipc_reader(pa.memory_map(f.path)).schema
        return ArrowFile(
            f, schema, tuple(b.nbytes for b in batches), tuple(b.num_rows for b in batches)
        )
    except (OSError, pa.ArrowException) as e:
        raise ConvertError(f"{f.path}: cannot read as Parquet/Arrow: {e}") from None


def read_units(
    inputs: Inputs, f: InputFile, start: int, stop: int, rows: int, size: int
) -> Iterator[pa.RecordBatch]:
    """The record batches of units ``[start, stop)`` of ``f`` (``rows`` rows and ``size``
    input bytes in all), each of about _BATCH_BYTES."""
    if is_parquet(f.path):
        pf = _parquet_file(inputs, f)
        batch_rows = int(np.clip(_BATCH_BYTES * max(1, rows) // max(1, size), 16, 65536))
        yield from pf.iter_batches(
            batch_size=batch_rows, row_groups=range(start, stop), use_threads=False
        )
    elif inputs.local:
        yield from _ipc_batches(f.path)[start:stop]
    else:
        with inputs.open(f.path, size=f.size) as fh:
            reader = _open_ipc_reader(fh)
            if isinstance(reader, pa.ipc.RecordBatchFileReader):
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
            else:
                yield from reader


def sample_columns(inputs: Inputs, f: InputFile, names: list[str], rows: int) -> dict[str, list]:
    """The first ``rows`` values of the columns ``names`` of ``f``, as Python objects. Reads
    only those columns' first pages (or, for an IPC stream, its first record batch)."""
    if is_parquet(f.path):
        if inputs.local:
            pf = pq.ParquetFile(f.path)
        else:  # buffered page reads: a row group's whole column chunk is not needed
            raw = inputs.open(f.path, size=f.size, buffer_size=0)
            pf = pq.ParquetFile(raw, buffer_size=1 << 20)
        if pf.metadata.num_row_groups == 0:
            return {}
        batches = pf.iter_batches(batch_size=rows, columns=names, row_groups=[0], use_threads=False)
        batch = next(iter(batches), None)
    else:
        batch = next(iter(read_units(inputs, f, 0, 1, WHOLE_FILE, f.size)), None)
    if batch is None:
        return {}
    batch = batch.slice(0, rows)
    return {n: batch.column(batch.schema.get_field_index(n)).to_pylist() for n in names}


def _parquet_file(inputs: Inputs, f: InputFile) -> pq.ParquetFile:
    if inputs.local:
        return pq.ParquetFile(f.path)
    # Unbuffered: each read pyarrow makes (the footer, a row group's column chunks, which
    # pre_buffer coalesces) is one ranged GET of exactly its bytes.
    return pq.ParquetFile(inputs.open(f.path, size=f.size, buffer_size=0), pre_buffer=True)


def _open_ipc_reader(source):
    """An Arrow IPC file reader, or a stream reader (Hugging Face writes .arrow as streams)."""
    try:
        return pa.ipc.open_file(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source)


def _ipc_batches(path: str) -> list[pa.RecordBatch]:
    """Every record batch of a local IPC file; zero-copy views of the memory-mapped file."""
    reader = _open_ipc_reader(pa.memory_map(path))
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        return [reader.get_batch(i) for i in range(reader.num_record_batches)]
    return list(reader)
