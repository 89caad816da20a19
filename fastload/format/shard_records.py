"""Where a shard's records lie, read from its index where the index lies (a mapped shard's own
pages, shared by every process that maps it) instead of copied into each process: an entry
per record (:class:`RecordEntries`), or, for a shard of fixed-size records, one checksum per
record with the rest computed from the block table (:class:`FixedRecords`; docs/format.md).

Both answer the same questions, for one record or an array of them, and hold nothing per
record of their own. Their tables are checked at open (shard_index.py) before any answer is
trusted; the compiled core (``_core.RecordMap``) reads the same bytes, checking its own way.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from .record import RecordLayout
from .shard_index import CHUNK, entry_problems, fixed_problems, misfit_record
from .spec import (
    BLOCK_DTYPE,
    CHECKSUM_DTYPE,
    FLAG_FIXED_SIZE,
    RECORD_ALIGN,
    RECORD_DTYPE,
    RECORD_SIZE_DTYPE,
)

__all__ = ["RecordEntries", "FixedRecords", "ShardRecords", "shard_records"]

#: What a record's place is: its block, offset in the block's raw bytes, length, checksum.
Place = tuple[int, int, int, int]


class RecordEntries:
    """A record table of one entry per record (``RECORD_DTYPE``), read in place."""

    #: None: records of any size (see :class:`FixedRecords`).
    record_size: int | None = None

    def __init__(self, index: memoryview, n_blocks: int, n_records: int) -> None:
        """``index``: the shard's index bytes (its size checked already)."""
        self.blocks, self.block_bytes, table = _split(index, n_blocks)
        self.table = table  # the record table's bytes, for the compiled core
        self._entries = np.frombuffer(table, RECORD_DTYPE, count=n_records)
        self.shortest = 0  # record bytes; set by check()

    def __len__(self) -> int:
        return len(self._entries)

    def problems(self) -> list[str]:
        """What is wrong with the table against the blocks (empty: nothing)."""
        return entry_problems(self.blocks, self._entries)

    def check_lengths(self, layout: RecordLayout | None) -> tuple[int, str] | None:
        """Learn the shortest record; with ``layout``, the first record whose length does
        not fit it, and why (or None)."""
        lengths = self._entries["length"]
        if len(lengths):
            chunks = range(0, len(lengths), CHUNK)
            self.shortest = int(min(lengths[a : a + CHUNK].min() for a in chunks))
        return None if layout is None else misfit_record(lengths, layout)

    def place(self, r: int) -> Place:
        e = self._entries[r]
        return int(e["block"]), int(e["offset"]), int(e["length"]), int(e["checksum"])

    def length(self, r: int) -> int:
        return int(self._entries["length"][r])

    def in_block(self, b: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Block ``b``'s records: the first one's number, then their offsets, lengths and
        checksums."""
        first, n = int(self.blocks["first_record"][b]), int(self.blocks["n_records"][b])
        e = self._entries[first : first + n]
        return first, e["offset"].astype(np.uint64), e["length"].astype(np.uint64), e["checksum"]

    def entries(self, rs: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Records ``rs`` as entries of an ordinary record table (a copy; for tools)."""
        return np.array(self._entries[rs])


class FixedRecords:
    """The fixed layout: every record ``record_size`` bytes, laid end to end at
    ``RECORD_ALIGN`` in blocks of ``per_block`` records (the last may hold fewer), so record
    r is record ``r % per_block`` of block ``r // per_block``; the table holds only the
    records' checksums."""

    def __init__(self, index: memoryview, n_blocks: int, n_records: int) -> None:
        """``index``: the shard's index bytes (its size checked already); its record table
        holds the record size, then the checksums."""
        self.blocks, self.block_bytes, table = _split(index, n_blocks)
        blocks = self.blocks
        head = RECORD_SIZE_DTYPE.itemsize
        self.record_size = int(np.frombuffer(table, RECORD_SIZE_DTYPE, count=1)[0])
        self.table = memoryview(table)[head:]  # the checksums, for the compiled core
        self._checksums = np.frombuffer(table, CHECKSUM_DTYPE, count=n_records, offset=head)
        self.per_block = int(blocks["n_records"][0]) if len(blocks) else 1
        self.stride = -(-self.record_size // RECORD_ALIGN) * RECORD_ALIGN
        self.shortest = self.record_size if n_records else 0

    def __len__(self) -> int:
        return len(self._checksums)

    def problems(self) -> list[str]:
        return fixed_problems(self.blocks, len(self), self.record_size)

    def check_lengths(self, layout: RecordLayout | None) -> tuple[int, str] | None:
        if layout is None or not len(self):
            return None
        return misfit_record(np.array([self.record_size]), layout)  # one size: record 0's

    def place(self, r: int) -> Place:
        b, k = divmod(r, self.per_block)
        return b, k * self.stride, self.record_size, int(self._checksums[r])

    def length(self, r: int) -> int:
        return self.record_size

    def in_block(self, b: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        first, n = b * self.per_block, int(self.blocks["n_records"][b])
        offsets = np.arange(n, dtype=np.uint64) * np.uint64(self.stride)
        lengths = np.full(n, self.record_size, np.uint64)
        return first, offsets, lengths, self._checksums[first : first + n]

    def entries(self, rs: slice | np.ndarray = slice(None)) -> np.ndarray:
        rs = np.arange(len(self))[rs]
        out = np.zeros(len(rs), RECORD_DTYPE)
        out["block"], within = np.divmod(rs, self.per_block)
        out["offset"], out["length"] = within * self.stride, self.record_size
        out["checksum"] = self._checksums[rs]
        return out


ShardRecords = Union[RecordEntries, FixedRecords]


def shard_records(index, n_blocks: int, n_records: int, flags: int) -> ShardRecords:
    """The tables of ``index`` (a shard's index bytes, laid out as ``flags`` say; its size
    checked already)."""
    kind = FixedRecords if flags & FLAG_FIXED_SIZE else RecordEntries
    return kind(memoryview(index), n_blocks, n_records)


def _split(index: memoryview, n_blocks: int) -> tuple[np.ndarray, memoryview, memoryview]:
    """The block table (as entries and as bytes) and the record table's bytes."""
    split = n_blocks * BLOCK_DTYPE.itemsize
    blocks = np.frombuffer(index, BLOCK_DTYPE, count=n_blocks)
    return blocks, index[:split], index[split:]
