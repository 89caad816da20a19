"""One-call gathers of fixed-size fields: a batch of records checked and its fields copied into
the caller's arrays by one call into the compiled core, without read_into's Python per shard
and per block (:meth:`fastload.Dataset.fast_gather` hands them out).

Both take the fields as names, offsets in a record and sizes (:class:`Fields`), and return
False, with nothing promised about the arrays, for anything unusual (an index out of range, a
short record, a record that fails its checksum, a block not at hand): read_into then reads the
batch and raises its usual error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptRecordError
from ..format.record import RecordLayout
from ..format.spec import CODEC_NONE
from ..io.files import OpenFiles, files_allowed
from ..io.mapping import mapped_budget, note_read
from ..io.source import MappedSource

if TYPE_CHECKING:
    from ..format.shard_reader import ShardReader
    from .blocktable import BlockTable
    from .dataset import Dataset

__all__ = ["Fields", "RawGather", "ResidentGather"]


class Fields:
    """Fixed-size fields as ``_core.RecordMap.gather`` takes them: ``names``, each one's
    ``offsets`` in a record and ``sizes`` in bytes, and ``record_bytes``, the fixed part every
    record has (a shorter one is read_into's to report)."""

    def __init__(
        self, names: Sequence[str], offsets: Sequence[int], sizes: Sequence[int], record_bytes: int
    ) -> None:
        self.names = list(names)
        self.at = np.array(offsets, np.uint64)
        self.size = np.array(sizes, np.uint64)
        self.record_bytes = record_bytes

    @classmethod
    def of(cls, layout: RecordLayout, names: Sequence[str]) -> Fields | None:
        """Fields ``names`` of records of ``layout``; None unless each is a fixed-size scalar
        or array field (the others are not at a fixed place in a record)."""
        schema = layout.schema
        if not names or not all(
            name in schema and schema[name].kind in ("scalar", "ndarray") and schema[name].is_fixed
            for name in names
        ):
            return None
        places = layout.header_dtype.fields or {}  # (a record's fixed part: a struct)
        offsets = [places[name][1] for name in names]
        sizes = [places[name][0].itemsize for name in names]
        return cls(names, offsets, sizes, layout.header_size)

    def gather(
        self,
        table: BlockTable,
        sources: list,
        idx: np.ndarray,
        verify: bool,
        views: dict,
        *,
        in_blocks: bool,
    ) -> int:
        """Records ``idx`` gathered into ``views``, placed by ``table`` in ``sources`` (see
        ``_core.RecordMap.gather``). Returns a negative number when every record was
        gathered, else the position of the first that was not."""
        outs = self._bytes_of(views)
        stop = table.map.gather(sources, idx, verify, self.at, self.size, outs, in_blocks)
        note_read(len(idx), len(idx) * self.record_bytes)  # the pages it mapped: in budget
        return stop

    def read(
        self, table: BlockTable, fds: np.ndarray, idx: np.ndarray, verify: bool, views: dict
    ) -> int:
        """:meth:`gather` of records of raw blocks read from the shards' files ``fds`` with
        pread (``_core.RecordMap.read``): nothing is mapped, so nothing counts against the
        process's mapped budget."""
        return table.map.read(fds, idx, verify, self.at, self.size, self._bytes_of(views))

    def _bytes_of(self, views: dict) -> list[Any]:  # (numpy arrays: writable buffers)
        """The fields' arrays in ``views``, as the flat bytes the core writes."""
        return [views[name].reshape(-1).view(np.uint8) for name in self.names]


class RawGather:
    """The batch read of :meth:`Dataset.read_into` for the common fast case, with a fraction of
    its Python per batch: a local dataset whose shards are all memory-mapped and uncompressed.
    Small batches (16 token rows, say) spent ~100 us in read_into's per-shard bookkeeping,
    twice the copy.

    Records are placed by the dataset's :class:`BlockTable` from the shards' mapped indexes:
    nothing per record is kept here (a flat table of 24 bytes a record, in every process, was
    the largest part of a loader worker's memory on datasets of many small records). Each
    record's checksum is checked on every read, as read_into does. Read-only once built:
    threads share one.

    Data larger than the process's budget of mapped data (``FASTLOAD_MAPPED_BUDGET``) is read
    with pread from the shards' files (:mod:`fastload.io.files`) instead of from their maps:
    read at random, mapped records would fault in and be let go over and over (16 random 4 KB
    rows of 600 MB: 1.7 us a row with pread, 5.1 us through maps under a 256 MiB budget).
    Data that fits the budget stays mapped, where a read faults once and then only copies."""

    def __init__(
        self, readers: list[ShardReader], table: BlockTable, fields: Fields, files: OpenFiles | None
    ) -> None:
        self.n, self.fields, self.table = int(table.starts[-1]), fields, table
        self.buffers = [r.source.buffer for r in readers]
        self.verify = any(r.verify for r in readers)
        self.files = files

    @classmethod
    def build(cls, dataset: Dataset, names: Sequence[str]) -> RawGather | None:
        """The RawGather of fields ``names`` of ``dataset``, or None where it does not apply
        (a remote or compressed dataset, a field not at a fixed place, a short record)."""
        fields = Fields.of(dataset.record_layout, names)
        if fields is None or dataset.remote:
            return None
        try:
            readers = [dataset.shard_reader(s) for s in range(len(dataset.shards))]
            if not readers or any(r.source.buffer is None or not _all_raw(r) for r in readers):
                return None
            if any(len(r) and r.shortest < fields.record_bytes for r in readers):
                return None  # read_into says which record is short
            return cls(readers, dataset.block_table(), fields, _files_for(readers))
        except Exception:  # anything unexpected: the general path (and its errors)
            return None

    def gather(self, indices: np.ndarray, views: dict) -> bool:
        """Fill ``views`` with records ``indices`` (see :class:`BatchGather`). One call into
        the core: each record is checked and its fields copied in one pass over its bytes."""
        idx = _index_array(indices, self.n)
        if idx is None:
            return False
        fields, table = self.fields, self.table
        if self.files is not None:
            return fields.read(table, self.files.fds, idx, self.verify, views) < 0
        return fields.gather(table, self.buffers, idx, self.verify, views, in_blocks=False) < 0


def _files_for(readers: list[ShardReader]) -> OpenFiles | None:
    """The shards' files opened for pread, where their data is more than this process may
    keep mapped and the files are few enough to keep open; else None (read from the maps)."""
    sources = [r.source for r in readers]
    mapped = [s for s in sources if isinstance(s, MappedSource)]
    budget = mapped_budget()
    if len(mapped) < len(sources) or budget is None or sum(s.size for s in mapped) <= budget:
        return None
    if len(mapped) > files_allowed():
        return None
    files = OpenFiles([s.path for s in mapped], [s.identity for s in mapped])
    if not files.complete:  # a shard file gone or replaced since it was mapped
        files.close()
        return None
    return files


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
    already. Where each record lies comes from the dataset's :class:`BlockTable`.

    The blocks a batch used are kept by block number, so that the next batches over them are
    one core call with no Python per block (looking ~14 blocks up per batch made a warm
    remote batch ~20% dearer than a local one, and read_into's work per shard and block cost
    a compressed batch more than its decompression). They are let go whenever the dataset's
    ``version`` changes (a block unmapped or dropped from the block cache, a shard opened),
    so no more stay at hand than those allow. One per thread: what it holds changes with
    every batch."""

    def __init__(self, dataset: Dataset, fields: Fields) -> None:
        self.dataset, self.n, self.fields = dataset, len(dataset), fields
        self._version: int | None = None  # the dataset's, when the rows and _held were made
        self._table: BlockTable | None = None
        self._held: list = []  # block -> its bytes at hand, or None

    @classmethod
    def build(cls, dataset: Dataset, names: Sequence[str]) -> ResidentGather | None:
        """The ResidentGather of fields ``names`` of ``dataset``, or None where it does not
        apply (a local raw dataset: RawGather's)."""
        fields = Fields.of(dataset.record_layout, names)
        if fields is None:
            return None
        if not dataset.remote and dataset.manifest.bytes >= sum(
            s.raw_bytes for s in dataset.shards
        ):  # local and raw: RawGather's
            return None
        return cls(dataset, fields)

    def gather(self, indices: np.ndarray, views: dict) -> bool:
        """Fill ``views`` with records ``indices`` (see :class:`BatchGather`)."""
        version = self.dataset.version  # (a forked child starts afresh here, and so does this)
        idx = _index_array(indices, self.n)
        if idx is None:
            return False
        table = self._table
        if version != self._version or table is None:
            self._table = table = self.dataset.block_table()
            self._held = [None] * int(table.base[-1])
            self._version = version
        try:
            return self._gather(table, idx, views)
        except TypeError:
            pass  # a block not held yet (None)
        return self._gather_looked_up(table, idx, views)

    def _gather(self, table: BlockTable, idx: np.ndarray, views: dict) -> bool:
        # Unchecked here: every block held was checked whole (its checksum) when it was read.
        return self.fields.gather(table, self._held, idx, False, views, in_blocks=True) < 0

    def _gather_looked_up(self, table: BlockTable, idx: np.ndarray, views: dict) -> bool:
        """The batch with each of its blocks looked up first: mapped ones and those in the
        block cache are held for the next batches, blocks the shard reader holds (or
        decompressed past the cache's limit) only for this one."""
        if _plain_indices(idx, self.n) is None:
            return False  # negative or out of range: read_into's
        blocks = table.block_numbers(idx)
        if int(blocks.min()) < 0:
            return False  # a shard not open here yet
        found, lent = {}, []
        for g in set(blocks.tolist()):
            key, reader, b, raw = table.entry(g)
            if raw:
                if key is None:
                    return False  # a local raw block: read_into checks its records
                view = reader.source.resident(b)  # mapped and checked
                if view is None:
                    view = reader.held(b)  # held by the shard reader
                    if view is None:
                        return False
                    lent.append(g)
            else:
                view = reader.held(b)  # decompressed already
                if view is None:
                    if key is not None:
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
            return self._gather(table, idx, views)
        finally:
            for g in lent:
                self._held[g] = None


def _all_raw(reader: ShardReader) -> bool:
    """Whether every block of the shard is stored uncompressed."""
    return bool((reader.blocks["codec"] == CODEC_NONE).all())


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
