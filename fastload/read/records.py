"""A batch of records, once located in their buffers, read field by field: fixed-size fields
gathered into the caller's arrays (or new ones) by the compiled core, variable-size fields
sliced out of each record and decoded (the body of :meth:`fastload.Dataset.read_into`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _core
from ..errors import CorruptRecordError
from ..format.record import RecordDecodeError, RecordLayout
from ..format.schema import Field
from ..io.mapping import FAULT_REGION, note_read, release_pages

if TYPE_CHECKING:
    from .dataset import Dataset

__all__ = ["Spans", "read_spans", "as_indices", "release_views"]


@dataclass
class Spans:
    """Records located in their buffers: record i is ``buffers[src[i]][offsets[i]:+lengths[i]]``,
    record ``local[i]`` of shard ``shard[i]`` of ``dataset``."""

    dataset: Dataset
    buffers: list
    src: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    shard: np.ndarray
    local: np.ndarray

    def corrupt(self, i: int, why: str) -> CorruptRecordError:
        """The error for the i-th located record, naming its shard and record."""
        reader = self.dataset.shard_reader(int(self.shard[i]))
        return reader.corrupt_record(int(self.local[i]), why)


def read_spans(
    layout: RecordLayout,
    spans: Spans,
    out: Mapping[str, np.ndarray],
    image_views: Iterable[str] = (),
) -> dict[str, Any]:
    """The fields of the records of ``spans``: those named in ``out`` gathered straight into
    its arrays, the others returned by name (see :meth:`fastload.Dataset.read_into`)."""
    schema = layout.schema
    n = len(spans.src)
    for name, array in out.items():
        _check_out(schema[name], array, n)
    result: dict[str, Any] = {}
    for name, array in out.items():
        _, offset = (layout.header_dtype.fields or {})[name][:2]
        size = array.dtype.itemsize * (array.size // max(n, 1))
        _core.gather(
            spans.buffers,
            spans.src,
            spans.offsets + np.uint64(offset),
            np.full(n, size, np.uint64),
            array.reshape(-1).view(np.uint8),
            np.arange(n, dtype=np.uint64) * np.uint64(size),
        )
    rest = [f for f in layout.fixed_fields if f.name not in out and f.kind != "image"]
    if rest or layout.var_fields:
        headers = np.empty(n, layout.header_dtype)
        _core.gather(
            spans.buffers,
            spans.src,
            spans.offsets,
            np.full(n, layout.header_size, np.uint64),
            headers.view(np.uint8),
            np.arange(n, dtype=np.uint64) * np.uint64(layout.header_size),
        )
        for f in rest:
            result[f.name] = np.ascontiguousarray(headers[f.name])
        if layout.var_fields:
            result.update(_gather_var(layout, spans, headers, image_views))
    note_read(n, int(spans.lengths.sum()))  # the pages the batch mapped: within the budget
    return {name: result[name] for name in schema.names if name in result}


def _gather_var(
    layout: RecordLayout, spans: Spans, headers: np.ndarray, image_views: Iterable[str] = ()
) -> dict[str, list]:
    buffers, src, offsets, lengths = spans.buffers, spans.src, spans.offsets, spans.lengths
    corrupt = spans.corrupt
    n, k = len(src), len(layout.var_fields)
    ends = headers["__var_ends__"].reshape(n, k).astype(np.uint64)
    starts = np.concatenate([np.zeros((n, 1), np.uint64), ends[:, :-1]], axis=1)
    room = lengths - np.uint64(layout.header_size)
    bad = np.flatnonzero((ends < starts).any(axis=1) | (ends[:, -1] != room))
    if len(bad):
        raise corrupt(bad[0], "is malformed: its field lengths do not add up to its length")
    sizes = (ends - starts).reshape(-1)
    src_off = (offsets[:, None] + np.uint64(layout.header_size) + starts).reshape(-1)
    # Fields in ``image_views`` are views straight into the record's buffer (a mapped
    # shard, a block held in memory); the others are copied into one buffer, ``data``.
    as_views = set(image_views)
    in_place = np.tile([f.name in as_views for f in layout.var_fields], n)
    copied = np.where(in_place, np.uint64(0), sizes)
    dst = np.zeros(len(sizes), np.uint64)  # where each copied value starts in ``data``
    np.cumsum(copied[:-1], dtype=np.uint64, out=dst[1:])
    data = np.empty(int(copied.sum()), np.uint8)
    _core.gather(buffers, np.repeat(src, k), src_off, copied, data, dst)
    views = (
        [memoryview(data)] + [_byte_view(b) for b in buffers]  # pyright: ignore[reportArgumentType]
        if as_views
        else [memoryview(data)]  # pyright: ignore[reportArgumentType]
    )
    columns: dict[str, list] = {}
    for j, f in enumerate(layout.var_fields):
        col, no_copy = [], f.name in as_views
        for i in range(n):
            v = i * k + j
            view, a = (
                (views[1 + int(src[i])], int(src_off[v])) if no_copy else (views[0], int(dst[v]))
            )
            try:
                col.append(
                    layout.var_value(
                        f, view[a : a + int(sizes[v])], headers[i], image_views=no_copy
                    )
                )
            except RecordDecodeError as e:
                raise corrupt(i, f"is malformed: {e}") from None
        columns[f.name] = col
    return columns


def _check_out(field: Field, array: np.ndarray, n: int) -> None:
    if field.kind not in ("scalar", "ndarray") or not field.is_fixed:
        raise ValueError(f"field {field.name!r} is not fixed-size; it cannot be read into an array")
    want = (n, *(field.shape or ()))
    if (
        not isinstance(array, np.ndarray)
        or array.shape != want
        or array.dtype != field.np_dtype
        or not array.flags.c_contiguous
        or not array.flags.writeable
    ):
        raise ValueError(
            f"out[{field.name!r}] must be a writable C-contiguous {field.np_dtype} "
            f"array of shape {want}"
        )


def as_indices(indices) -> np.ndarray:
    """``indices`` as a flat int64 array; floats, bools and other non-integers are a TypeError
    (a silent truncation would return the wrong records)."""
    arr = np.asarray(indices).reshape(-1)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind == "O" and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in arr
    ):  # Python ints beyond 64 bits
        return np.array([max(min(int(i), 1 << 62), -(1 << 62)) for i in arr], np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"dataset indices must be integers, got an array of {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        return np.minimum(arr, 1 << 62).astype(np.int64)  # still out of range, but not wrapped
    return arr.astype(np.int64, copy=False)


def _byte_view(buffer) -> memoryview:
    view = memoryview(buffer)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def release_views(views: Iterable[memoryview | None]) -> None:
    """Let go of the pages this process maps for ``views`` (image views into a mapped shard,
    say) once it is done with them: they stay in the page cache, shared, and are mapped
    again if read again (see :func:`fastload.io.mapping.release_pages`). A loader worker
    decoding a dataset's images otherwise came to map every image it had read, ~1.3x
    torch DataLoader's memory (PSS) on 334 MB of JPEGs, where torch read()s its files."""
    for view in views:
        if view is not None:  # and the pages the reads' faults mapped beside it
            release_pages(view, region=FAULT_REGION)
