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
from .shard_index import CHUNK, entry_problems, fixed_problems, group_problems, misfit_record
from .spec import (
    BLOCK_DTYPE,
    CHECKSUM_DTYPE,
    FLAG_CHECKSUM_GROUPS,
    FLAG_FIXED_SIZE,
    GROUP_DTYPE,
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
    group = 1  # records per checksum

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

    def checked(self, r: int) -> tuple[int, int]:
        """Where the bytes record ``r``'s checksum covers lie in its block: offset, length
        (here the record itself)."""
        e = self._entries[r]
        return int(e["offset"]), int(e["length"])

    def sharing_checksum(self, r: int) -> tuple[int, int]:
        """The first and last record checked with record ``r``'s checksum (here ``r``)."""
        return r, r

    def length(self, r: int) -> int:
        return int(self._entries["length"][r])

    def in_block(self, b: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Block ``b``'s records, to check them: the first one's number, then for each the
        offset and length of the bytes its checksum covers (here the record), and the
        checksum."""
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
    records' checksums, or (``group`` > 1) one checksum per ``group`` records of a block, over
    their bytes end to end."""

    def __init__(self, index: memoryview, n_blocks: int, n_records: int, grouped: bool) -> None:
        """``index``: the shard's index bytes (its size checked already); its record table
        holds the record size, (``grouped``) the records per checksum, then the checksums."""
        self.blocks, self.block_bytes, table = _split(index, n_blocks)
        blocks = self.blocks
        head = RECORD_SIZE_DTYPE.itemsize
        self.record_size = int(np.frombuffer(table, RECORD_SIZE_DTYPE, count=1)[0])
        self.group = 1
        if grouped:
            self.group = int(np.frombuffer(table, GROUP_DTYPE, count=1, offset=head)[0])
            head += GROUP_DTYPE.itemsize
        self.table = memoryview(table)[head:]  # the checksums, for the compiled core
        n_checks = n_records if not grouped else len(self.table) // CHECKSUM_DTYPE.itemsize
        self._checksums = np.frombuffer(table, CHECKSUM_DTYPE, count=n_checks, offset=head)
        self._n = n_records
        self.per_block = int(blocks["n_records"][0]) if len(blocks) else 1
        self.per_block = max(self.per_block, 1)  # (a damaged table: problems() says so)
        self.groups_per_block = -(-self.per_block // max(self.group, 1))
        self.stride = -(-self.record_size // RECORD_ALIGN) * RECORD_ALIGN
        self.shortest = self.record_size if n_records else 0

    def __len__(self) -> int:
        return self._n

    def problems(self) -> list[str]:
        problems = fixed_problems(self.blocks, self._n, self.record_size)  # (may be huge)
        if problems or self.group == 1:
            return problems
        return group_problems(self.blocks, self.group, len(self.table))

    def check_lengths(self, layout: RecordLayout | None) -> tuple[int, str] | None:
        if layout is None or not len(self):
            return None
        return misfit_record(np.array([self.record_size]), layout)  # one size: record 0's

    def place(self, r: int) -> Place:
        b, k = divmod(r, self.per_block)
        checksum = self._checksums[b * self.groups_per_block + k // self.group]
        return b, k * self.stride, self.record_size, int(checksum)

    def _group_of(self, r: int) -> tuple[int, int, int]:
        """Record ``r``'s group: its block, its first record's place in the block, and how
        many records it holds (1 and r's own place without groups)."""
        b, k = divmod(r, self.per_block)
        if self.group == 1:
            return b, k, 1
        first = k // self.group * self.group
        return b, first, min(self.group, int(self.blocks["n_records"][b]) - first)

    def checked(self, r: int) -> tuple[int, int]:
        """Where the bytes record ``r``'s checksum covers lie in its block: offset, length
        (the record itself, or its group)."""
        _, first, count = self._group_of(r)
        return first * self.stride, (count - 1) * self.stride + self.record_size

    def sharing_checksum(self, r: int) -> tuple[int, int]:
        """The first and last record checked with record ``r``'s checksum (its group)."""
        b, first, count = self._group_of(r)
        start = b * self.per_block + first
        return start, start + count - 1

    def length(self, r: int) -> int:
        return self.record_size

    def in_block(self, b: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        first, n = b * self.per_block, int(self.blocks["n_records"][b])
        k = np.arange(n, dtype=np.uint64)
        stride, size, group = np.uint64(self.stride), np.uint64(self.record_size), self.group
        if group == 1:
            return (
                first,
                k * stride,
                np.full(n, size, np.uint64),
                self._checksums[first : first + n],
            )
        starts = k // np.uint64(group) * np.uint64(group)
        counts = np.minimum(np.uint64(group), np.uint64(n) - starts)
        sums = self._checksums[b * self.groups_per_block + (k // np.uint64(group)).astype(np.int64)]
        return first, starts * stride, (counts - np.uint64(1)) * stride + size, sums

    def entries(self, rs: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Records ``rs`` as entries of an ordinary record table (their checksums: their
        groups'; for tools)."""
        rs = np.arange(len(self))[rs]
        out = np.zeros(len(rs), RECORD_DTYPE)
        out["block"], within = np.divmod(rs, self.per_block)
        out["offset"], out["length"] = within * self.stride, self.record_size
        out["checksum"] = self._checksums[
            out["block"] * self.groups_per_block + within // self.group
        ]
        return out


ShardRecords = Union[RecordEntries, FixedRecords]


def shard_records(index, n_blocks: int, n_records: int, flags: int) -> ShardRecords:
    """The tables of ``index`` (a shard's index bytes, laid out as ``flags`` say; its size
    checked already)."""
    if flags & FLAG_FIXED_SIZE:
        grouped = bool(flags & FLAG_CHECKSUM_GROUPS)
        return FixedRecords(memoryview(index), n_blocks, n_records, grouped)
    return RecordEntries(memoryview(index), n_blocks, n_records)


def _split(index: memoryview, n_blocks: int) -> tuple[np.ndarray, memoryview, memoryview]:
    """The block table (as entries and as bytes) and the record table's bytes."""
    split = n_blocks * BLOCK_DTYPE.itemsize
    blocks = np.frombuffer(index, BLOCK_DTYPE, count=n_blocks)
    return blocks, index[:split], index[split:]
