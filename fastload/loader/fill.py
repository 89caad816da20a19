"""Filling one batch slab from a fastload dataset: the work a loader worker does per batch."""

from __future__ import annotations

import time
import weakref
from typing import Any, Optional

import numpy as np

from .. import _core
from ..dataset import Dataset
from .layout import BatchLayout

__all__ = ["fill_batch", "BatchTimings"]


class BatchTimings(dict):
    """Seconds spent per stage for one batch (``read``, ``decode``) and bytes read."""


def fill_batch(dataset: Dataset, layout: BatchLayout, slab: np.ndarray, indices: np.ndarray,
               rng_seed: tuple[int, ...]) -> tuple[dict[str, Any], BatchTimings]:  # fmt: skip
    """Write records ``indices`` into ``slab`` (fixed-size fields gathered in C++, images
    decoded in place); return the fields that travel as lists, and the stage timings.

    ``rng_seed`` seeds the batch's augmentations, so they depend on which batch this is and
    never on which worker happens to fill it.
    """
    start = time.perf_counter()
    n = len(indices)
    views = layout.views(slab, n)
    fast = _raw_gather(dataset, layout)
    if fast is None or not fast.gather(indices, views):
        # Images to decode here are read as views (decoded below, never sent anywhere).
        extra = {"image_views": tuple(layout.decode)} if layout.decode else {}
        listed = dataset.read_into(indices, out={name: views[name] for name in layout.gathered},
                                   **extra)  # fmt: skip
    else:
        listed = {}
    read_done = time.perf_counter()
    if layout.decode:
        from ..decode import decode_batch_into  # only image pipelines pay for Pillow

        rng = np.random.default_rng(list(rng_seed))
        for name, spec in layout.decode.items():
            images = listed.pop(name)
            try:
                decode_batch_into([im.data for im in images], [im.height for im in images],
                                  [im.width for im in images], views[name], rng=rng,
                                  train=spec.train, layout=spec.layout)  # fmt: skip
            except Exception as e:
                index = getattr(e, "index", None)
                if index is not None and hasattr(e, "add_note"):
                    e.add_note(f"field {name!r} of dataset record {int(indices[index])}")
                raise
    done = time.perf_counter()
    nbytes = sum(v.nbytes for v in views.values())
    timings = BatchTimings(read=read_done - start, decode=done - read_done, bytes=nbytes)
    if getattr(dataset, "remote", False):  # this process's remote-read counters, as increments
        timings["io"] = dataset.io_stats_delta()
    return listed, timings


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
        size = layout.batch_size
        fields = dataset._layout.header_dtype.fields
        self.fields = []  # (name, byte offset in the record, sizes, destination offsets)
        for slot in layout.slots:
            b = np.uint64(slot.sample_bytes)
            self.fields.append((slot.name, np.uint64(fields[slot.name][1]),
                                np.full(size, b, np.uint64),
                                np.arange(size, dtype=np.uint64) * b))  # fmt: skip

    @classmethod
    def build(cls, dataset: Any, layout: BatchLayout) -> Optional["RawGather"]:
        if type(dataset) is not Dataset or getattr(dataset, "remote", True) or layout.decode \
                or layout.listed or not layout.slots or len(dataset) > cls.MAX_RECORDS:
            return None
        try:
            readers = [dataset.shard_reader(s) for s in range(len(dataset.shards))]
            header = dataset._layout.header_size
            if not readers or any(r.source.buffer is None or not r._all_raw or
                                  r._starts is None for r in readers):  # fmt: skip
                return None
            if any(len(r._lengths) and int(r._lengths.min()) < header for r in readers):
                return None  # read_into says which record is short
            for slot in layout.slots:
                if dataset.schema[slot.name].kind not in ("scalar", "ndarray"):
                    return None
            return cls(dataset, layout, readers)
        except Exception:  # anything unexpected: the general path (and its errors)
            return None

    def gather(self, indices: np.ndarray, views: dict) -> bool:
        """Fill ``views`` with records ``indices``; False (nothing promised about ``views``)
        when read_into must do it instead."""
        idx = np.asarray(indices)
        n = len(idx)
        if n == 0 or idx.dtype.kind not in "iu" or idx.ndim != 1:
            return False
        if int(idx.min()) < 0 or int(idx.max()) >= self.n:
            return False
        src, offsets = self.src[idx], self.offsets[idx]
        if self.verify:
            lengths, checksums = self.lengths[idx], self.checksums[idx]
            if len(self.buffers) == 1 or (src == src[0]).all():
                parts = [(int(src[0]), offsets, lengths, checksums)]
            else:
                parts = [(int(s), offsets[m], lengths[m], checksums[m])
                         for s in np.unique(src) for m in [src == s]]  # fmt: skip
            for s, off, ln, ck in parts:
                if _core.check_slices(self.buffers[s], off, ln, ck) >= 0:
                    return False  # read_into names the corrupt record
        for name, at, sizes, dst in self.fields:
            out = views[name]
            _core.gather(self.buffers, src, offsets + at, sizes[:n],
                         out.reshape(-1).view(np.uint8), dst[:n])  # fmt: skip
        return True


_gathers: "weakref.WeakKeyDictionary[BatchLayout, tuple]" = weakref.WeakKeyDictionary()


def _raw_gather(dataset: Any, layout: BatchLayout) -> Optional[RawGather]:
    """This process's RawGather for (dataset, layout), built on first use (None: not usable)."""
    cached = _gathers.get(layout)
    if cached is None or cached[0] is not dataset:
        cached = _gathers[layout] = (dataset, RawGather.build(dataset, layout))
    return cached[1]
