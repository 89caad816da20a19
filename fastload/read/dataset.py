"""Reading datasets: ``fastload.Dataset(path)`` gives random access to records by index, and
batched reads into a caller's buffers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

from ..format.record import RecordDecodeError
from ..io.fs import join
from ..io.mapping import note_read
from .contract import BatchGather
from .gather import RawGather, ResidentGather
from .opening import display_name
from .records import Spans, as_indices, read_spans
from .shards import ShardSet

__all__ = ["Dataset"]


class Dataset(ShardSet):
    """A fastload dataset at a local path or fsspec URL.

    ``len(ds)``, ``ds[i]`` (a dict of field values; negative indices count from the end),
    iteration in storage order, and ``ds.get_batch(indices)`` for columnar batches. Every
    record's checksum is checked before it is used unless ``verify=False``.

    Datasets pickle cheaply (open shards are not pickled), so they can be sent to workers.

    Remote datasets (``s3://``, ``gs://``, any fsspec URL that is not a local path) are read
    with ranged GETs of blocks, retried on transient errors, through a block cache on local
    disk: ``cache_dir`` (default ``$FASTLOAD_CACHE_DIR`` or ``~/.cache/fastload``; ``False``
    for none) holding at most ``cache_limit`` bytes (``"50GB"``; default 10 GB), shared safely
    by every process using that directory. ``ds.prefetch(indices)`` starts fetching the blocks
    of records about to be read; ``ds.io_stats()`` counts requests, retries, bytes and cache
    hits. ``remote_options`` (a :class:`fastload.io.remote.RemoteOptions`) tunes the rest.

    Compressed blocks are decompressed whole. A local dataset's are decompressed once: the
    decompressed bytes are written to the same block cache (``cache_dir``, within
    ``cache_limit`` for everything it holds) and every process, in every epoch, maps that copy
    (checked against the records' checksums when mapped) instead of decompressing the block
    again, so a compressed dataset read at random reads like an uncompressed one from its
    second epoch while its copies fit. Without the cache (``cache_dir=False``, a remote
    dataset, or a block the cache has no room for), each process keeps up to ``block_cache``
    bytes of decompressed blocks in memory (default 128 MiB; ``"1GB"``, or 0 for none), least
    recently used dropped first; a dataset read at random is then decompressed once per
    process when its decompressed size fits, else about once per record read: see
    ``shuffle="block"``.
    ``max_block_bytes``: a compressed block declaring a larger decompressed size is refused
    before any memory is allocated for it. By default: 4 x the dataset's block size (its
    writer's ``block_size``), or for a block holding one record, that record's size if
    larger (a record larger than the block size gets a block of its own).

    Records are read where they lie in memory maps (local shards, decompressed copies, cached
    remote blocks): the page cache's pages, shared by every process. Pages a process has read
    stay mapped in it, counted in its RSS, PSS and private memory, so each process keeps at
    most about ``FASTLOAD_MAPPED_BUDGET`` bytes of them mapped (an environment variable,
    default 256 MiB; ``none`` for no bound; :func:`fastload.io.mapping.set_mapped_budget`):
    past it, it lets its mappings go (the pages stay in the page cache) and maps again only
    what it reads next. Its memory then does not grow with how much of the dataset it has
    read; what it costs is a page fault for each read of a page let go (reads at random over
    more data than the budget: about one per record).

    A local shard that is a symbolic link to a file outside the dataset's directory is refused
    unless ``follow_symlinks=True`` (a dataset from elsewhere must not make fastload open any
    file the user can read).
    """

    # -- what the source called its classes and columns ------------------------------------
    @property
    def classes(self) -> list[str] | None:
        """The class names, a label's value indexing them (as torchvision's
        ``ImageFolder.classes``): those of the field ``label``, else of the first field that
        has names; None when the dataset names none (``manifest.classes`` has every field's)."""
        named = self.manifest.classes
        if not named:
            return None
        field = "label" if "label" in named else next(f for f in self.schema.names if f in named)
        return list(named[field])

    @property
    def class_to_idx(self) -> dict[str, int] | None:
        """``{class name: label}``, as torchvision's ``ImageFolder.class_to_idx``."""
        classes = self.classes
        return None if classes is None else {name: i for i, name in enumerate(classes)}

    @property
    def features(self) -> dict[str, Any] | None:
        """The source's types of its columns as recorded at convert time (Hugging Face
        features: ``{"label": {"_type": "ClassLabel", "names": [...]}, ...}``), or None."""
        return self.manifest.features

    # -- records --------------------------------------------------------------------------
    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, record within shard)`` of a dataset index (negative counts from the end)."""
        n = len(self)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}")
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} records")
        starts = self.record_starts
        s = int(np.searchsorted(starts, i, side="right")) - 1
        return s, i - int(starts[s])

    def describe_record(self, index: int) -> str:
        """Record ``index`` as messages name it: its shard and its place there."""
        s, r = self.locate(index)
        path = display_name(self.fs, join(self.fs, self.root, self.manifest.shards[s].path))
        return f"dataset record {int(index)} (record {r} of shard {path})"

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        s, r = self.locate(index)
        return self._decode(s, r)

    def _decode(self, s: int, r: int) -> dict[str, Any]:
        reader = self.shard_reader(s)
        view = memoryview(reader.record(r))
        try:
            return self.record_layout.decode(view)
        except RecordDecodeError as e:
            raise reader.corrupt_record(r, f"is malformed: {e}") from None
        finally:
            note_read(1, view.nbytes)  # the pages it mapped (a shard's, a copy's): in budget

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for s, info in enumerate(self.manifest.shards):
            for r in range(info.records):
                yield self._decode(s, r)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Records ``indices`` as columns: one numpy array per fixed-size field (gathered in the
        compiled core) and one list per variable-size field, in the order given."""
        return self.read_into(indices)

    def read_into(
        self,
        indices: Sequence[int] | np.ndarray,
        out: Mapping[str, np.ndarray] | None = None,
        *,
        image_views: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Like :meth:`get_batch`, but the fixed-size fields named in ``out`` are gathered
        straight into the arrays given there (shape ``(n, *field shape)``, the field's dtype,
        C-contiguous; a shared-memory batch buffer, say): one copy of their bytes, in C++.
        Returns the other fields, by name.

        ``image_views``: image fields whose values are read-only memoryviews straight into
        the records' checked bytes (the mapped shard, or a block held in memory) instead of a
        bytes copy each, for a caller that decodes them at once: a batch of 256 JPEGs is
        ~30 MB, which each loader worker copied (and held) per batch. The views keep what they
        point into alive."""
        out = dict(out or {})
        spans = self._locate(as_indices(indices))
        return read_spans(self.record_layout, spans, out, image_views)

    def fast_gather(self, names: tuple[str, ...]) -> BatchGather | None:
        """A one-call gather of fixed-size fields ``names`` (:mod:`fastload.read.gather`): a
        local dataset of raw blocks has one RawGather per process (read-only, shared by
        threads), a remote or compressed one a new ResidentGather per call (one per thread).
        None for a subclass, whose own read_into is the read it asked for."""
        if type(self) is not Dataset:
            return None
        names = tuple(names)
        raw = self.built_once(("raw gather", names), lambda: RawGather.build(self, names))
        return raw if raw is not None else ResidentGather.build(self, names)

    def block_numbers(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The dataset-wide number of the storage block that holds each of records
        ``indices`` (blocks numbered shard after shard, as the manifest lists them), or -1 for
        an index out of range. Opens the shards it needs (their indexes only). Readers of a
        compressed dataset split work by it: a block decompressed by one of them is not
        decompressed again by the others."""
        idx = as_indices(indices)
        n = len(self)
        out = np.full(len(idx), -1, np.int64)
        ok = (idx >= -n) & (idx < n)
        idx = np.where(idx < 0, idx + n, idx)[ok]
        if not len(idx):
            return out
        table = self.block_table()
        found = table.block_numbers(idx)
        if int(found.min()) < 0:  # shards not open yet: open them (their indexes only)
            shard_of = np.searchsorted(self.record_starts, idx[found < 0], side="right") - 1
            for s in sorted(set(shard_of.tolist())):
                self.shard_reader(s)
            found = table.block_numbers(idx)
        out[ok] = found
        return out

    def _locate(self, idx: np.ndarray) -> Spans:
        """Where records ``idx`` lie (checksums checked), for gathers in the compiled core."""
        n = len(self)
        bad = np.flatnonzero((idx < -n) | (idx >= n))
        if len(bad):
            raise IndexError(f"index {idx[bad[0]]} is out of range for a dataset of {n} records")
        idx = np.where(idx < 0, idx + n, idx)
        shard_of = np.searchsorted(self.record_starts, idx, side="right") - 1
        local = idx - self.record_starts[shard_of]
        fetch = self.remote and len(idx) > 1  # the batch's blocks in parallel, coalesced
        if len(self.shards) == 1 or (len(idx) and (shard_of == shard_of[0]).all()):
            if fetch:
                self.prefetch_records([(int(shard_of[0]), local)])
            bufs, src, offsets, lengths = self.shard_reader(int(shard_of[0])).locate(local)
            return self._spans(list(bufs), src, offsets, lengths, shard_of, local)
        buffers: list = []
        src = np.empty(len(idx), np.uint32)
        offsets = np.empty(len(idx), np.uint64)
        lengths = np.empty(len(idx), np.uint64)
        # sorted(set()), not np.unique: np.unique imports numpy.ma on first use, ~15 ms in
        # every freshly started worker
        groups = [(s, np.flatnonzero(shard_of == s)) for s in sorted(set(shard_of.tolist()))]
        if fetch:
            self.prefetch_records([(s, local[mine]) for s, mine in groups])
        for s, mine in groups:
            bufs, si, off, ln = self.shard_reader(s).locate(local[mine])
            src[mine] = si + len(buffers)
            offsets[mine], lengths[mine] = off, ln
            buffers.extend(bufs)
        return self._spans(buffers, src, offsets, lengths, shard_of, local)

    def _spans(self, buffers, src, offsets, lengths, shard_of, local) -> Spans:
        spans = Spans(self, buffers, src, offsets, lengths, shard_of, local)
        short = np.flatnonzero(lengths < self.record_layout.header_size)
        if len(short):
            raise spans.corrupt(short[0], f"is {lengths[short[0]]} bytes, shorter than its header")
        return spans

    def block_sizes(self) -> np.ndarray:
        """Records per storage block, block by block in the order of their numbers (shard
        after shard); opens every shard (its index only)."""
        sizes = [self.shard_reader(s).blocks["n_records"] for s in range(len(self.shards))]
        return np.concatenate(sizes).astype(np.int64) if sizes else np.zeros(0, np.int64)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.path!r}, records={len(self)}, shards={len(self.shards)}, "
            f"schema={self.schema.to_dict()})"
        )
