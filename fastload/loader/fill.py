"""Filling one batch slab from a fastload dataset: the work a loader worker does per batch."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch

from ..errors import CorruptRecordError
from ..read.contract import BatchGather, Readable
from ..read.records import release_views
from .layout import BatchLayout, ImageDecode, TokenDecode
from .transform import probe_outputs, sample_at, transform_rows
from .variable import Ragged, empty_value, fill_padded

__all__ = [
    "fill_batch",
    "fill_block_share",
    "block_share_rows",
    "share_rows",
    "probe_transform",
    "BatchTimings",
]


class BatchTimings(dict):
    """Seconds spent per stage for one batch (``read``, ``decode``), bytes read, and blocks
    decompressed (``decompressed``, in this process since its previous batch)."""


def fill_batch(
    dataset: Readable,
    layout: BatchLayout,
    slab: np.ndarray,
    indices: np.ndarray,
    rng_seed: tuple[int, ...],
    part: tuple[int, int] = (0, 1),
    skip_bad: bool = False,
) -> tuple[dict[str, Any], BatchTimings]:
    """Write records ``indices`` into ``slab`` (fixed-size fields gathered in C++, images
    decoded in place); return the fields that travel as lists, and the stage timings.

    ``rng_seed`` seeds the batch's augmentations: each image's crop and flip come from a
    generator keyed by it, the field and the image's position in the batch, so they depend on
    which batch (and where in it) and never on which worker fills it, or how many.

    ``part=(k, parts)``: fill only the k-th of ``parts`` contiguous shares of the batch's rows
    (every field; the listed fields returned are that share's). Several workers fill one
    batch of images at once this way, each its share.

    ``skip_bad``: a record that fails its checksum, or an image that does not decode, is left
    as zeros and its row listed in the timings' ``"bad"`` as ``(row, why)`` (the consumer drops
    it; see badsamples.py) instead of raising.

    With a ``transform`` (transform.py), the records are read into a scratch buffer of the
    dataset's own layout and each transformed sample written into ``slab``; its time counts
    as decoding.
    """
    if layout.transform is not None:
        return _fill_transformed(dataset, layout, slab, indices, rng_seed, part, skip_bad)
    start = time.perf_counter()
    n = len(indices)
    lo, hi = share_rows(n, *part)
    views = layout.views(slab, n)
    mine = indices
    if part[1] > 1:
        mine, views = indices[lo:hi], {name: v[lo:hi] for name, v in views.items()}
    listed, bad = _read_share(dataset, layout, mine, views, lo, skip_bad)
    for name, spec in layout.padded.items():
        fill_padded(
            listed.pop(name), views[name], views[f"{name}_lengths"], spec, np.asarray(mine), name
        )
    if part[1] == 1:  # a whole batch: its variable-length values end to end (shares: lists)
        for name in layout.ragged:
            listed[name] = Ragged.of(listed[name], empty_value(layout.schema, name))
    read_done = time.perf_counter()
    if layout.staged:
        _for_staged(layout, listed, views, rng_seed, range(lo, hi), np.asarray(mine))
    if layout.decode:
        bad += _decoded(dataset, layout, listed, views, rng_seed, range(lo, hi), mine, skip_bad)
    for name, rows in layout.rows.items():
        _finish_tokens(layout, name, views[rows], views)
    done = time.perf_counter()
    areas = set(layout.encoded.values())  # counted by what the images took of them
    nbytes = sum(v.nbytes for k, v in views.items() if k not in areas) + sum(
        int(listed[name].offsets[-1]) for name in layout.staged
    )
    timings = BatchTimings(
        read=read_done - start,
        decode=done - read_done,
        bytes=nbytes,
        decompressed=dataset.take_decompressed(),
    )
    if bad:
        timings["bad"] = sorted(bad)
    if dataset.remote:
        _add_io(dataset, timings)
    return listed, timings


def _read_share(
    dataset: Readable, layout: BatchLayout, mine, views: dict, lo: int, skip_bad: bool
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """Records ``mine`` (rows ``lo`` on of the batch) read into ``views``: one core call where
    the dataset has one for these fields, else read_into. Returns the fields that travel as
    lists, and the bad rows skipped (``skip_bad``) as ``(row, why)``."""
    fast = _raw_gather(dataset, layout)
    out = layout.gather_views(views)
    if fast is not None and fast.gather(mine, out):
        return {}, []
    # Images to decode here are read as views (decoded below, never sent anywhere), and so
    # are staged ones (copied end to end into one bytes below).
    views_of = (*layout.decode, *layout.staged)
    extra = {"image_views": views_of} if views_of else {}
    try:
        return dataset.read_into(mine, out=out, **extra), []
    except CorruptRecordError:
        if not skip_bad:
            raise
        return _read_each(dataset, layout, np.asarray(mine), out, extra, lo)


def _finish_tokens(
    layout: BatchLayout, name: str, rows: np.ndarray, views: dict, at: Any = slice(None)
) -> None:
    """Token field ``name``'s ``rows`` finished into its slot (and its targets') at rows
    ``at`` of ``views``."""
    spec = layout.tokens[name]
    if not isinstance(at, slice):  # rows scattered in the batch: finished, then put there
        done = spec.finish(rows)
        parts = done if isinstance(done, tuple) else (done,)
        for key, value in zip(_token_keys(spec, name), parts):
            views[key][at] = value.numpy()
        return
    out = tuple(torch.from_numpy(views[key][at]) for key in _token_keys(spec, name))
    spec.finish(rows, out=out if spec.shift else out[0])


def _token_keys(spec, name: str) -> tuple[str, ...]:
    return (name, spec.targets_name(name)) if spec.shift else (name,)


def _for_staged(
    layout: BatchLayout,
    listed: dict,
    views: dict,
    rng_seed: tuple,
    rows: range,
    records: np.ndarray,
) -> None:
    """Each staged field's encoded images as an EncodedBatch (in the slab's area for them
    where they fit), with the crops its decoder is to take: ``rows`` of the batch, dataset
    ``records``."""
    from ..decode.encoded import encoded_batch

    for name, spec in layout.staged.items():
        area = views[layout.encoded[name]].reshape(-1) if layout.encoded else None
        seed = (*rng_seed, layout.seeds[name])
        listed[name] = encoded_batch(
            listed[name], spec, seed, rows, records, into=area, scale=spec.scale, ratio=spec.ratio
        )


def _decoded(
    dataset: Readable,
    layout: BatchLayout,
    listed: dict,
    views: dict,
    rng_seed: tuple,
    rows: range,
    records: np.ndarray,
    skip_bad: bool,
) -> list[tuple[int, str]]:
    """Decode each image field's images (taken out of ``listed``) into its slab view: rows
    ``rows`` of the batch, dataset ``records``; a field the workers finish is decoded into
    scratch pixels a few rows at a time and finished from there into the slab. Returns the
    rows whose image did not decode (``skip_bad``; else the first one raises, naming its
    field, record and shard)."""
    from ..decode import DecodeError, draw_batch_params, image_rngs

    bad = []
    # Reading checked every image's bytes, which mapped them all (~20 MB a worker for 128
    # JPEGs): let them go now, and each few once decoded, so that a worker maps a few images'
    # pages at a time instead of its whole share of the batch.
    release_views(im.data for name in layout.decode for im in listed[name] if im is not None)
    for name, spec in layout.decode.items():
        images = listed.pop(name)  # None for a row whose record was skipped
        heights = [im.height if im is not None else 1 for im in images]
        widths = [im.width if im is not None else 1 for im in images]
        params = None
        if spec.train:
            rngs = image_rngs((*rng_seed, layout.seeds[name]), rows)
            params = draw_batch_params(
                heights,
                widths,
                spec.hw,
                train=True,
                rngs=rngs,
                scale=spec.scale,
                ratio=spec.ratio,
            )
        finished = layout.tensor(name, views[name]) if name in layout.finished_in_workers else None
        for a, b in _runs([im is not None for im in images]):
            for lo in range(a, b, _FINISH_ROWS):
                hi = min(b, lo + _FINISH_ROWS)
                target = _pixels(spec, hi - lo) if finished is not None else views[name][lo:hi]
                for i, e in _decode(
                    images[lo:hi],
                    heights[lo:hi],
                    widths[lo:hi],
                    target,
                    params[lo:hi] if params is not None else None,
                    spec,
                    skip_bad,
                ):
                    where = f"field {name!r} of {_record_name(dataset, int(records[lo + i]))}"
                    if not skip_bad:
                        named = DecodeError(f"{where}: {e.reason}")
                        named.index = e.index
                        raise named from e
                    bad.append((rows.start + lo + i, f"{where}: {e.reason}"))
                if finished is not None:
                    spec.finish(target, out=finished[lo:hi])
                release_views(im.data for im in images[lo:hi])  # decoded: not needed
    return bad


# Rows a worker decodes at a time: into scratch pixels before finishing them into the slab, a
# few MB of pixels (16 images of 224x224) still in the CPU's caches when the finishing pass
# reads them; and the images whose mapped bytes it lets go of together.
_FINISH_ROWS = 16


def _pixels(spec: ImageDecode, n: int) -> np.ndarray:
    """This thread's scratch uint8 pixels for ``n`` images of ``spec`` (reused)."""
    shape = (n, *spec.pixel_shape)
    size = int(np.prod(shape))
    buf = getattr(_local, "pixels", None)
    if buf is None or len(buf) < size:
        buf = _local.pixels = np.empty(size, np.uint8)
    return buf[:size].reshape(shape)


def _record_name(dataset: Readable, index: int) -> str:
    """A record as messages name it (its shard where the dataset says)."""
    try:
        return dataset.describe_record(index)
    except Exception:
        return f"dataset record {index}"


def _add_io(dataset: Readable, timings: BatchTimings) -> None:
    """This process's remote-read counters, as increments, into ``timings``."""
    io = dataset.io_stats_delta()
    if io:  # (a batch read from mapped cache copies moves none: its result travels flat)
        timings["io"] = io


def fill_block_share(
    dataset: Readable,
    layout: BatchLayout,
    slab: np.ndarray,
    indices: np.ndarray,
    part: int,
    parts: int,
    skip_bad: bool = False,
) -> tuple[np.ndarray, dict[str, Any], BatchTimings]:
    """Fill the rows of a batch whose records lie in the storage blocks of share ``part`` of
    ``parts`` (block number modulo ``parts``; see :meth:`Dataset.block_numbers`); returns
    those rows (positions in the batch), their listed fields, and the timings. The batch's
    other rows are other workers' shares.

    For compressed datasets read by several worker processes: each of them decompresses
    only its own blocks, where whole batches would have every worker decompress nearly every
    block (a block's records fall in batches that go to different workers), and each
    worker's block cache holds its share. Not for images to decode or a transform: the rows
    are not contiguous, so the gathered (and padded) fields are read into buffers of their
    own and scattered into the slab, and the consumer puts the listed ones in place."""
    start = time.perf_counter()
    n = len(indices)
    indices = np.asarray(indices)
    rows = block_share_rows(dataset, indices, part, parts)
    views = layout.views(slab, n)
    bad: list[tuple[int, str]] = []
    listed: dict[str, Any] = {}
    nbytes = 0
    if len(rows):
        mine = indices[rows]
        out = {
            name: np.empty((len(rows), *view.shape[1:]), view.dtype)
            for name, view in layout.gather_views(views).items()
        }
        fast = _raw_gather(dataset, layout)
        try:
            if fast is None or not fast.gather(mine, out):
                listed = dataset.read_into(mine, out=out)
        except CorruptRecordError:
            if not skip_bad:
                raise
            listed, bad = _read_each(dataset, layout, mine, out, {}, 0)
            bad = [(int(rows[row]), why) for row, why in bad]
        for name, spec in layout.padded.items():
            padded, lengths = np.empty_like(views[name][rows]), np.empty(len(rows), np.int64)
            fill_padded(listed.pop(name), padded, lengths, spec, mine, name)
            out[name], out[f"{name}_lengths"] = padded, lengths
        for name, values in out.items():
            views[layout.rows.get(name, name)][rows] = values
            nbytes += values.nbytes
        for name in layout.rows:
            _finish_tokens(layout, name, out[name], views, rows)
    timings = BatchTimings(
        read=time.perf_counter() - start,
        decode=0.0,
        bytes=nbytes,
        decompressed=dataset.take_decompressed(),
    )
    if bad:
        timings["bad"] = bad
    if dataset.remote:
        _add_io(dataset, timings)
    return rows, listed, timings


def block_share_rows(dataset: Readable, indices: np.ndarray, part: int, parts: int) -> np.ndarray:
    """The rows of a batch of records ``indices`` in share ``part`` of ``parts`` by block
    (an index out of range falls to the last share, whose read then raises)."""
    return np.flatnonzero(dataset.block_numbers(indices) % parts == part)


def _fill_transformed(
    dataset: Readable,
    layout: BatchLayout,
    slab: np.ndarray,
    indices: np.ndarray,
    rng_seed: tuple[int, ...],
    part: tuple[int, int],
    skip_bad: bool,
) -> tuple[dict[str, Any], BatchTimings]:
    transform = layout.transform
    if transform is None:  # (only a layout with a transform comes here)
        raise ValueError("a batch to transform needs a layout with a transform")
    n = len(indices)
    lo, hi = share_rows(n, *part)
    scratch = _scratch(layout.input.slab_size)
    listed, timings = fill_batch(dataset, layout.input, scratch, indices, rng_seed, part, skip_bad)
    start = time.perf_counter()
    inputs, out = layout.input.views(scratch, n), layout.views(slab, n)
    inputs = {name: v[lo:hi] for name, v in inputs.items()}
    out = {name: v[lo:hi] for name, v in out.items()}
    skipped = {row for row, _ in timings.get("bad", ())}
    lists = transform_rows(
        transform,
        layout.outputs,
        inputs,
        listed,
        layout.input.names,
        np.asarray(indices)[lo:hi],
        range(lo, hi),
        skipped,
        out,
    )
    timings["decode"] += time.perf_counter() - start
    return lists, timings


def probe_transform(
    dataset: Readable,
    decode: Mapping[str, ImageDecode | TokenDecode] | None,
    transform: Callable[[dict], Any],
) -> tuple:
    """The fields ``transform`` returns, from the dataset's first record read as a worker
    reads it (transform.probe_outputs); none for an empty dataset."""
    schema = dataset.schema
    if len(dataset) == 0 or schema is None:  # (no schema: the general path runs transform)
        return ()
    layout = BatchLayout(schema, 1, decode)
    slab = np.zeros(layout.slab_size, np.uint8)
    listed, _ = fill_batch(dataset, layout, slab, np.zeros(1, np.int64), (0, 0))
    sample = sample_at(layout.views(slab, 1), listed, layout.names, 0)
    return probe_outputs(transform, sample, 0)


_local = threading.local()


def _scratch(size: int) -> np.ndarray:
    """This thread's buffer of at least ``size`` bytes for records to transform (thread
    workers each have theirs)."""
    buf = getattr(_local, "scratch", None)
    if buf is None or len(buf) < size:
        buf = _local.scratch = np.empty(size, np.uint8)
    return buf[:size]


def _read_each(
    dataset: Readable, layout: BatchLayout, indices: np.ndarray, out: dict, extra: dict, lo: int
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """read_into one record at a time, after a batch read found a corrupt record: a row whose
    record fails its checksum is left as zeros and returned as bad ``(lo + row, why)``; its
    listed values are None (or a zero row, for a field read as an array)."""
    rows: list[dict | None] = []
    bad: list[tuple[int, str]] = []
    for i in range(len(indices)):
        row_out = {name: v[i : i + 1] for name, v in out.items()}
        try:
            rows.append(dataset.read_into(indices[i : i + 1], out=row_out, **extra))
        except CorruptRecordError as e:
            for v in row_out.values():
                v.fill(0)
            rows.append(None)
            bad.append((lo + i, f"dataset record {int(indices[i])}: {e}"))
    good = next((r for r in rows if r is not None), None)
    listed: dict[str, Any] = {}
    for name in (*layout.listed, *layout.decode, *layout.padded):  # read as lists, then used
        if good is not None and isinstance(good[name], np.ndarray):
            blank = np.zeros_like(good[name])
            listed[name] = np.concatenate([r[name] if r is not None else blank for r in rows])
        else:
            listed[name] = [r[name][0] if r is not None else None for r in rows]
    return listed, bad


def _runs(keep: list[bool]) -> list[tuple[int, int]]:
    """The ``[a, b)`` ranges of consecutive True in ``keep``."""
    runs, start = [], None
    for i, k in enumerate([*keep, False]):
        if k and start is None:
            start = i
        elif not k and start is not None:
            runs.append((start, i))
            start = None
    return runs


def share_rows(n: int, part: int, parts: int) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of share ``part`` of ``parts`` of a batch of ``n``."""
    return n * part // parts, n * (part + 1) // parts


def _decode(
    images: list, heights: list, widths: list, out: np.ndarray, params, spec, skip_bad: bool
):
    """Decode ``images`` into ``out``; yields ``(i, DecodeError)`` for each image that fails
    (only the first unless ``skip_bad``: the caller raises it), its row left as zeros."""
    from ..decode import DecodeError, decode_batch_into

    data, start = [im.data for im in images], 0
    indexes = [im.entropy_index for im in images]
    while start < len(images):
        part = slice(start, None)
        try:
            decode_batch_into(
                data[part],
                heights[part],
                widths[part],
                out[part],
                train=spec.train,
                layout=spec.pixel_layout,
                params=params[part] if params is not None else None,
                indexes=indexes[part],
            )
            return
        except DecodeError as e:
            if e.index is None:
                raise
            i = start + e.index
            out[i] = 0
            yield i, e
            start = i + 1


def _raw_gather(dataset: Readable, layout: BatchLayout) -> BatchGather | None:
    """This thread's one-call gather for (dataset, layout), made on first use (None: there is
    none). Thread workers each have theirs: what a ResidentGather holds changes with every
    batch (one shared swapped its tables under another thread's core call); the dataset
    shares what can be shared (a RawGather is read-only)."""
    mine = getattr(_local, "gathers", None)  # goes with its thread
    if mine is None:
        mine = _local.gathers = weakref.WeakKeyDictionary()
    got = mine.get(layout)
    if got is None or got[0] is not dataset:
        got = mine[layout] = (dataset, _new_gather(dataset, layout))
    return got[1]


def _new_gather(dataset: Readable, layout: BatchLayout) -> BatchGather | None:
    """The dataset's one-call gather of the layout's fields, where every field of the batch
    is gathered (nothing listed, decoded or padded, which read_into does)."""
    if layout.decode or layout.listed or layout.padded or not layout.gathered:
        return None
    return dataset.fast_gather(layout.gathered)
