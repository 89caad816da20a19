"""Filling one batch slab from a fastload dataset: the work a loader worker does per batch."""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

import numpy as np

from .. import _core
from ..errors import CorruptRecordError
from ..read.dataset import Dataset
from .layout import BatchLayout
from .variable import Ragged, empty_value, fill_padded

__all__ = ["fill_batch", "fill_block_share", "block_share_rows", "share_rows", "BatchTimings"]


class BatchTimings(dict):
    """Seconds spent per stage for one batch (``read``, ``decode``), bytes read, and blocks
    decompressed (``decompressed``, in this process since its previous batch)."""


def fill_batch(
    dataset: Dataset,
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
    bad: list[tuple[int, str]] = []
    fast = _raw_gather(dataset, layout)
    if fast is None or not fast.gather(mine, views):
        # Images to decode here are read as views (decoded below, never sent anywhere), and
        # so are those for DALI (copied end to end into one bytes below).
        views_of = (*layout.decode, *layout.dali)
        extra = {"image_views": views_of} if views_of else {}
        out = {name: views[name] for name in layout.gathered}
        try:
            listed = dataset.read_into(mine, out=out, **extra)
        except CorruptRecordError:
            if not skip_bad:
                raise
            listed, bad = _read_each(dataset, layout, np.asarray(mine), out, extra, lo)
    else:
        listed = {}
    for name, spec in layout.padded.items():
        fill_padded(
            listed.pop(name), views[name], views[f"{name}_lengths"], spec, np.asarray(mine), name
        )
    if part[1] == 1:  # a whole batch: its variable-length values end to end (shares: lists)
        for name in layout.ragged:
            listed[name] = Ragged.of(listed[name], empty_value(layout.schema, name))
    read_done = time.perf_counter()
    if layout.dali:
        from ..decode.dali import dali_batch

        for name, spec in layout.dali.items():
            area = views[layout.encoded[name]].reshape(-1) if layout.encoded else None
            listed[name] = dali_batch(
                listed[name],
                spec,
                (*rng_seed, layout.seeds[name]),
                range(lo, hi),
                np.asarray(mine),
                into=area,
            )
    if layout.decode:
        from ..decode import draw_batch_params, image_rngs

        for name, spec in layout.decode.items():
            f = layout.seeds[name]
            images = listed.pop(name)  # None for a row whose record was skipped
            heights = [im.height if im is not None else 1 for im in images]
            widths = [im.width if im is not None else 1 for im in images]
            params = None
            if spec.train:
                rngs = image_rngs((*rng_seed, f), range(lo, hi))
                params = draw_batch_params(heights, widths, spec.hw, train=True, rngs=rngs)
            for a, b in _runs([im is not None for im in images]):
                for i, e in _decode(
                    images[a:b],
                    heights[a:b],
                    widths[a:b],
                    views[name][a:b],
                    params[a:b] if params is not None else None,
                    spec,
                    skip_bad,
                ):
                    where = f"field {name!r} of dataset record {int(mine[a + i])}"
                    if not skip_bad:
                        if hasattr(e, "add_note"):
                            e.add_note(where)
                        raise e
                    bad.append((lo + a + i, f"{where}: {e.reason}"))
    done = time.perf_counter()
    areas = set(layout.encoded.values())  # counted by what the images took of them
    nbytes = sum(v.nbytes for k, v in views.items() if k not in areas) + sum(
        int(listed[name].offsets[-1]) for name in layout.dali
    )
    timings = BatchTimings(
        read=read_done - start,
        decode=done - read_done,
        bytes=nbytes,
        decompressed=_decompressed(dataset),
    )
    if bad:
        timings["bad"] = sorted(bad)
    _add_io(dataset, timings)
    return listed, timings


def _add_io(dataset: Any, timings: BatchTimings) -> None:
    """This process's remote-read counters, as increments, into ``timings`` (for a Mix, once:
    the counters are the process's)."""
    remote = next(
        (d for d in getattr(dataset, "datasets", None) or [dataset] if getattr(d, "remote", False)),
        None,
    )
    if remote is not None:
        io = remote.io_stats_delta()
        if io:  # (a batch read from mapped cache copies moves none: its result travels flat)
            timings["io"] = io


def fill_block_share(
    dataset: Dataset,
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
            name: np.empty((len(rows), *views[name].shape[1:]), views[name].dtype)
            for name in layout.gathered
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
            views[name][rows] = values
            nbytes += values.nbytes
    timings = BatchTimings(
        read=time.perf_counter() - start,
        decode=0.0,
        bytes=nbytes,
        decompressed=_decompressed(dataset),
    )
    if bad:
        timings["bad"] = bad
    _add_io(dataset, timings)
    return rows, listed, timings


def _decompressed(dataset: Any) -> int:
    """Blocks of ``dataset`` (a Mix's datasets) decompressed in this process since the
    previous call."""
    datasets = getattr(dataset, "datasets", None) or [dataset]
    return sum(d._decoded.take_decompressed() for d in datasets if hasattr(d, "_decoded"))


def block_share_rows(dataset: Dataset, indices: np.ndarray, part: int, parts: int) -> np.ndarray:
    """The rows of a batch of records ``indices`` in share ``part`` of ``parts`` by block
    (an index out of range falls to the last share, whose read then raises)."""
    return np.flatnonzero(dataset.block_numbers(indices) % parts == part)


def _fill_transformed(
    dataset: Dataset,
    layout: BatchLayout,
    slab: np.ndarray,
    indices: np.ndarray,
    rng_seed: tuple[int, ...],
    part: tuple[int, int],
    skip_bad: bool,
) -> tuple[dict[str, Any], BatchTimings]:
    from .transform import transform_rows

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
        layout.transform,
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


_local = threading.local()


def _scratch(size: int) -> np.ndarray:
    """This thread's buffer of at least ``size`` bytes for records to transform (thread
    workers each have theirs)."""
    buf = getattr(_local, "scratch", None)
    if buf is None or len(buf) < size:
        buf = _local.scratch = np.empty(size, np.uint8)
    return buf[:size]


def _read_each(
    dataset: Dataset, layout: BatchLayout, indices: np.ndarray, out: dict, extra: dict, lo: int
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
    while start < len(images):
        part = slice(start, None)
        try:
            decode_batch_into(
                data[part],
                heights[part],
                widths[part],
                out[part],
                train=spec.train,
                layout=spec.layout,
                params=params[part] if params is not None else None,
            )
            return
        except DecodeError as e:
            if e.index is None:
                raise
            i = start + e.index
            out[i] = 0
            yield i, e
            start = i + 1


class RawGather:
    """The batch read of :meth:`Dataset.read_into` for the common fast case, with a fraction of
    its Python per batch: a local dataset whose shards are all memory-mapped and uncompressed,
    and a batch layout that gathers every field (no listed fields, no images). Small batches
    (16 token rows, say) spent ~100 us in read_into's per-shard bookkeeping, twice the copy.

    It keeps flat per-record arrays (buffer, offset, length, checksum: 24 bytes a record), so
    it is used only up to ``MAX_RECORDS`` records. Each record's checksum is checked on every
    read, as read_into does; anything unusual (an index out of range, negative, a checksum
    that fails) returns False, and read_into then does the read and raises its usual error."""

    MAX_RECORDS = 1 << 22

    def __init__(self, dataset: Dataset, layout: BatchLayout, readers: list) -> None:
        self.dataset, self.n = dataset, len(dataset)
        self.buffers = [r.source.buffer for r in readers]
        self.verify = any(r.verify for r in readers)
        counts = [len(r._starts) for r in readers]
        self.src = np.repeat(np.arange(len(readers), dtype=np.uint32), counts)
        self.offsets = np.concatenate([r._starts for r in readers]).astype(np.uint64)
        self.lengths = np.concatenate([r._lengths for r in readers]).astype(np.uint64)
        self.checksums = np.concatenate([r._checksums for r in readers]).astype(np.uint32)
        self.fields = _Fields(dataset, layout)

    @classmethod
    def build(cls, dataset: Any, layout: BatchLayout) -> RawGather | None:
        if (
            type(dataset) is not Dataset
            or getattr(dataset, "remote", True)
            or layout.decode
            or layout.listed
            or layout.padded
            or not layout.slots
            or len(dataset) > cls.MAX_RECORDS
        ):
            return None
        try:
            readers = [dataset.shard_reader(s) for s in range(len(dataset.shards))]
            header = dataset._layout.header_size
            if not readers or any(
                r.source.buffer is None or not r._all_raw or r._starts is None for r in readers
            ):
                return None
            if any(len(r) and r.shortest < header for r in readers):
                return None  # read_into says which record is short
            if not _all_gathered(dataset, layout):
                return None
            return cls(dataset, layout, readers)
        except Exception:  # anything unexpected: the general path (and its errors)
            return None

    def gather(self, indices: np.ndarray, views: dict) -> bool:
        """Fill ``views`` with records ``indices``; False (nothing promised about ``views``)
        when read_into must do it instead (it names an index out of range, a short record or
        one that fails its checksum). One call into the core: each record is checked and its
        fields copied in one pass over its bytes."""
        idx = _index_array(indices, self.n)
        if idx is None:
            return False
        rows = (self.src, self.offsets, self.lengths, self.checksums)
        return self.fields.gather(self.buffers, rows, idx, self.verify, views) < 0


class ResidentGather:
    """:class:`RawGather`'s counterpart for remote and compressed datasets: a batch whose
    records all lie in blocks at hand in this process and checked whole is gathered in one
    call, without read_into's work per shard and per block (a shuffled batch of 16 token rows
    touches ~14 blocks). At hand: a remote raw block's cached copy, mapped
    (``RemoteSource.resident``) or held by the shard reader; a compressed block's
    decompressed bytes in the dataset's block cache, or, for a local dataset, decompressed
    here and then. Anything else (a remote block not at hand, a shard not opened yet, a raw
    block of a local dataset, a short record) returns False, and read_into does the read,
    fetching what is missing; the loader's read-ahead has usually asked for those blocks
    already. Where each record lies comes from the dataset's block table.

    The blocks a batch used are kept by block number, so that the next batches over them are
    one core call with no Python per block (looking ~14 blocks up per batch made a warm
    remote batch ~20% dearer than a local one, and read_into's work per shard and block cost
    a compressed batch more than its decompression). They are let go whenever the store
    unmaps a block or the block cache drops one, so no more stay at hand than those allow."""

    def __init__(self, dataset: Dataset, layout: BatchLayout) -> None:
        self.dataset, self.n = dataset, len(dataset)
        self.fields = _Fields(dataset, layout)
        self._table: Any = None  # (the block table, its shards_added) the rows are from
        self._rows: tuple = ()  # per record: block, offset, length, checksum
        self._held: list = []  # block -> its bytes at hand, or None
        self._dropped: Any = None  # what let go of blocks when _held was filled

    @classmethod
    def build(cls, dataset: Any, layout: BatchLayout) -> ResidentGather | None:
        if (
            type(dataset) is not Dataset
            or layout.decode
            or layout.listed
            or layout.padded
            or not layout.slots
            or not _all_gathered(dataset, layout)
        ):
            return None
        if not dataset.remote and dataset.manifest.bytes >= sum(
            s.raw_bytes for s in dataset.shards
        ):  # local and raw: RawGather's
            return None
        if dataset._block_table(local=True) is None:
            return None
        return cls(dataset, layout)

    def gather(self, indices: np.ndarray, views: dict) -> bool:
        """Fill ``views`` with records ``indices``; False (nothing promised about ``views``)
        when read_into must do it instead."""
        ds = self.dataset
        ds._own()  # a forked child starts afresh (and so do the tables)
        table = ds._block_table(local=True)
        idx = _index_array(indices, self.n)
        if idx is None or table is None:
            return False
        store = ds._store_() if ds.remote else None
        if self._table != (table, table.shards_added):
            # -1 (not gatherable) as uint32 is out of range: the core call says so
            self._table = (table, table.shards_added)
            self._rows = (
                table.gather_of.view(np.uint32),
                table.offset.astype(np.uint64),
                np.full(self.n, ds._layout.header_size, np.uint64),
                np.zeros(self.n, np.uint32),
            )
            self._dropped = None
        dropped = (
            store,
            store.maps_dropped if store is not None else 0,
            ds._decoded,
            ds._decoded.dropped,
        )
        if self._dropped != dropped:
            self._held = [None] * len(table.entries)
            self._dropped = dropped
        try:
            return self.fields.gather(self._held, self._rows, idx, False, views) < 0
        except (TypeError, ValueError):
            pass  # a block not held yet (None), or a shard not gatherable (-1: out of range)
        return self._gather_looked_up(table, store, idx, views)

    def _gather_looked_up(self, table: Any, store: Any, idx: np.ndarray, views: dict) -> bool:
        """The batch with each of its blocks looked up first: mapped ones and those in the
        block cache are held for the next batches, blocks the shard reader holds (or
        decompressed past the cache's limit) only for this one."""
        if _plain_indices(idx, self.n) is None:
            return False  # negative or out of range: read_into's
        blocks = table.gather_of[idx]
        if int(blocks.min()) < 0:
            return False  # a shard not open here yet, or not gatherable
        found, lent = {}, []
        for g in set(blocks.tolist()):
            key, reader, b = table.entries[g]
            if reader._raw[b]:
                if store is None:
                    return False  # a local raw block: read_into checks its records
                view = store.maps.get(key)  # mapped and checked (RemoteSource.resident)
                if view is None:
                    view = reader.held(b)  # held by the shard reader
                    if view is None:
                        return False
                    lent.append(g)
            else:
                view = reader.held(b)  # decompressed already
                if view is None:
                    if store is not None:
                        return False  # read_into fetches the batch's blocks together
                    try:
                        view = reader.block(b)  # checked, decompressed, cached
                    except CorruptRecordError:
                        return False  # read_into raises it, or skips the block's records
                    if reader.held(b) is None:
                        lent.append(g)  # past the cache's limit: not kept here either
            found[g] = view
        for g, view in found.items():
            self._held[g] = view
        try:
            return self.fields.gather(self._held, self._rows, idx, False, views) < 0
        finally:
            for g in lent:
                self._held[g] = None


class _Fields:
    """A layout's gathered fields as :func:`_core.gather_records` takes them."""

    def __init__(self, dataset: Any, layout: BatchLayout) -> None:
        places = dataset._layout.header_dtype.fields
        self.names = [slot.name for slot in layout.slots]
        self.at = np.array([places[name][1] for name in self.names], np.uint64)
        self.size = np.array([slot.sample_bytes for slot in layout.slots], np.uint64)

    def gather(self, sources: list, rows: tuple, idx: np.ndarray, verify: bool, views: dict) -> int:
        """gather_records of records ``idx`` into ``views``; ``rows`` = (source, offset,
        length, checksum) per record."""
        outs = [views[name].reshape(-1).view(np.uint8) for name in self.names]
        return _core.gather_records(sources, *rows, idx, verify, self.at, self.size, outs)


def _index_array(indices: Any, n: int) -> np.ndarray | None:
    """``indices`` as the contiguous int64 array the core takes (it checks their range
    itself), or None when they are not plain indices (see :func:`_plain_indices`)."""
    if (
        type(indices) is np.ndarray
        and indices.dtype == np.int64
        and indices.ndim == 1
        and len(indices)
        and indices.flags.c_contiguous
    ):
        return indices
    idx = _plain_indices(indices, n)
    return None if idx is None else np.ascontiguousarray(idx, np.int64)


def _plain_indices(indices: Any, n: int) -> np.ndarray | None:
    """``indices`` as an array if they are the plain case (non-empty, 1-D, integers in
    ``[0, n)``), else None: read_into handles the rest and raises its errors."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or len(idx) == 0 or idx.dtype.kind not in "iu":
        return None
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        return None
    return idx


def _all_gathered(dataset: Any, layout: BatchLayout) -> bool:
    return all(dataset.schema[slot.name].kind in ("scalar", "ndarray") for slot in layout.slots)


_gathers: weakref.WeakKeyDictionary[BatchLayout, tuple] = weakref.WeakKeyDictionary()


def _raw_gather(dataset: Any, layout: BatchLayout) -> RawGather | ResidentGather | None:
    """This thread's fast gather for (dataset, layout): a RawGather (local, uncompressed;
    read-only once built, so one per process) or a ResidentGather (its blocks at hand change
    with every batch: one per thread, or thread workers would swap them under each other),
    built on first use (None: neither is usable)."""
    cached = _gathers.get(layout)
    if cached is None or cached[0] is not dataset:
        cached = _gathers[layout] = (dataset, RawGather.build(dataset, layout))
    if cached[1] is not None:
        return cached[1]
    mine = getattr(_local, "resident", None)  # goes with its thread
    if mine is None:
        mine = _local.resident = weakref.WeakKeyDictionary()
    got = mine.get(layout)
    if got is None or got[0] is not dataset:
        got = mine[layout] = (dataset, ResidentGather.build(dataset, layout))
    return got[1]
