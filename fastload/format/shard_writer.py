"""Writes one shard file: header, blocks, index, trailer (layout in spec.py)."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

from .checksum import hash64, record_checksum, record_checksums
from .codec import BlockCompressor
from .spec import (
    BLOCK_DTYPE,
    CHECKSUM_DTYPE,
    FLAG_CHECKSUM_GROUPS,
    FLAG_FIXED_SIZE,
    FORMAT_VERSION,
    GROUP_DTYPE,
    HEADER_DTYPE,
    MAGIC,
    MAX_BLOCK_RAW_SIZE,
    RECORD_ALIGN,
    RECORD_DTYPE,
    RECORD_SIZE_DTYPE,
    TRAILER_DTYPE,
    checksum_group,
)

__all__ = ["ShardWriter", "ShardSummary"]


class ShardSummary(dict):
    """What the manifest records of a finished shard (records, bytes, blocks, raw_bytes, hash)."""


class ShardWriter:
    """Appends encoded records to a shard, cutting blocks of about ``block_size`` raw bytes.

    The caller owns ``out`` (a binary file object opened for writing) and decides when the
    shard is full by looking at :attr:`bytes_written`.
    """

    def __init__(
        self,
        out: BinaryIO,
        compressor: BlockCompressor,
        block_size: int,
        *,
        schema_hash: int,
        record_size: int | None = None,
    ) -> None:
        """``schema_hash``: the fingerprint of the records' schema (``Schema.fingerprint``),
        recorded in the header for readers to check against the manifest's schema.
        ``record_size``: the one size of every record, for a schema of fixed-size fields only
        (``RecordLayout.header_size``); the shard is then written in the fixed layout (4 bytes
        of index per record, or one checksum per group of records smaller than 64 bytes:
        docs/format.md), and a record of another size is refused."""
        if block_size <= 0 or block_size > MAX_BLOCK_RAW_SIZE:
            raise ValueError(f"block_size must be in 1..{MAX_BLOCK_RAW_SIZE}, got {block_size}")
        if record_size is not None and not 0 <= record_size <= MAX_BLOCK_RAW_SIZE:
            raise ValueError(f"record_size must be in 0..{MAX_BLOCK_RAW_SIZE}, got {record_size}")
        self._record_size = record_size
        self._flags = 0 if record_size is None else FLAG_FIXED_SIZE
        self._group = 1 if record_size is None else checksum_group(record_size)
        if self._group > 1:
            self._flags |= FLAG_CHECKSUM_GROUPS
        self._group_sums: list[np.ndarray] = []  # a block's groups' checksums, per block
        self._out = out
        self._compressor = compressor
        self._block_size = block_size
        self._block = bytearray()
        self._block_records: list[tuple[int, int, int]] = []  # (offset, length, checksum)
        self._blocks: list[tuple] = []
        self._records: list[np.ndarray] = []  # RECORD_DTYPE entries, one array per block
        self._n_records = 0  # in finished blocks
        self.bytes_written = 0
        self.raw_bytes = 0
        header = np.zeros((), HEADER_DTYPE)
        header["magic"] = MAGIC
        header["version"] = FORMAT_VERSION
        header["schema_hash"] = schema_hash
        header["flags"] = self._flags
        self._write(header.tobytes())

    @property
    def records_written(self) -> int:
        return self._n_records + len(self._block_records)

    @property
    def pending_bytes(self) -> int:
        """Raw bytes of the block being filled, not yet written."""
        return len(self._block)

    def _write(self, data) -> None:
        self._out.write(data)
        self.bytes_written += len(data)

    def _fits(self, size: int) -> bool:
        """Whether a record of ``size`` bytes still goes into the open block. A record never
        straddles blocks: a big one closes the current block and gets one of its own."""
        pad = -len(self._block) % RECORD_ALIGN
        return not self._block_records or len(self._block) + pad + size <= self._block_size

    def add(self, record) -> None:
        """Append one encoded record (any bytes-like object)."""
        record = memoryview(record).cast("B")  # also makes `+=` below a byte append for arrays
        size = len(record)
        if size > MAX_BLOCK_RAW_SIZE:
            raise ValueError(f"record of {size} bytes exceeds the {MAX_BLOCK_RAW_SIZE} limit")
        self._check_size(size)
        if not self._fits(size):
            self._flush_block()
        self._block += bytes(-len(self._block) % RECORD_ALIGN)
        self._block_records.append((len(self._block), size, record_checksum(record)))
        self._block += record
        if len(self._block) >= self._block_size:
            self._flush_block()

    def _check_size(self, size: int) -> None:
        if self._record_size is not None and size != self._record_size:
            raise ValueError(
                f"record of {size} bytes in a shard of {self._record_size}-byte records (its "
                "schema's fixed size): the record was not encoded with this shard's schema"
            )

    def records_per_block(self, size: int) -> int:
        """How many records of ``size`` bytes fill one block (what :meth:`add` would put)."""
        if size >= self._block_size:
            return 1
        return (self._block_size - size) // _round_up(size, RECORD_ALIGN) + 1

    def records_fitting(self, size: int) -> int:
        """How many records of ``size`` bytes :meth:`add` would put in the open block before
        closing it (a whole block's worth when none is open or the next one would not fit)."""
        if not self._block_records or size >= self._block_size:
            return self.records_per_block(size)
        first = _round_up(len(self._block), RECORD_ALIGN)
        if first + size > self._block_size:
            return self.records_per_block(size)
        return (self._block_size - size - first) // _round_up(size, RECORD_ALIGN) + 1

    def add_many(self, rows: np.ndarray) -> None:
        """Append equal-size encoded records, the rows of a 2-D uint8 array.

        Blocks come out exactly as :meth:`add` would cut them, but whole blocks are built and
        checksummed in bulk, with no Python per record (token files are millions of records).
        """
        n, size = rows.shape
        self._check_size(size)
        i = 0
        while i < n and self._block_records:  # top up the open block first, as add() would
            if not self._fits(size):
                self._flush_block()
                break
            self.add(rows[i])
            i += 1
        per_block = self.records_per_block(size)
        full_end = i + (n - i) // per_block * per_block
        for start in range(i, full_end, per_block):
            self._flush_rows(rows[start : start + per_block])
        for j in range(full_end, n):
            self.add(rows[j])

    def _flush_rows(self, rows: np.ndarray) -> None:
        n, size = rows.shape
        stride = _round_up(size, RECORD_ALIGN)
        if stride == size:  # already aligned (token samples): the rows are the block
            raw = np.ascontiguousarray(rows).reshape(-1)
        else:
            padded = np.zeros((n, stride), np.uint8)
            padded[:, :size] = rows
            raw = padded.reshape(-1)[: (n - 1) * stride + size]
        offsets = np.arange(n, dtype=np.uint64) * np.uint64(stride)
        lengths = np.full(n, size, np.uint64)
        self._finish_block(raw, offsets, lengths, record_checksums(raw, offsets, lengths))

    def _flush_block(self) -> None:
        if not self._block_records:
            return
        offsets, lengths, checksums = zip(*self._block_records)
        self._finish_block(self._block, offsets, lengths, checksums)
        self._block = bytearray()
        self._block_records = []

    def _finish_block(self, raw, offsets, lengths, checksums) -> None:
        """Compress and write one block of records and remember their index entries."""
        codec, stored = self._compressor.compress(raw)
        block = len(self._blocks)
        entries = np.zeros(len(offsets), RECORD_DTYPE)
        entries["block"], entries["offset"] = block, offsets
        entries["length"], entries["checksum"] = lengths, checksums
        self._blocks.append(
            (
                self.bytes_written,
                len(stored),
                len(raw),
                self._n_records,
                len(entries),
                codec,
                b"",
                hash64(stored),
            )
        )
        self._records.append(entries)
        if self._group > 1:
            self._group_sums.append(_group_checksums(raw, offsets, lengths, self._group))
        self._n_records += len(entries)
        self._write(stored)
        self.raw_bytes += len(raw)

    def finish(self) -> ShardSummary:
        """Write the last block, the index and the trailer; return the manifest entry."""
        self._flush_block()
        records = np.concatenate(self._records) if self._records else np.zeros(0, RECORD_DTYPE)
        blocks = np.array(self._blocks, dtype=BLOCK_DTYPE)
        index = blocks.tobytes() + self._record_table(blocks, records)
        index_offset = self.bytes_written
        index_hash = hash64(index)
        trailer = np.zeros((), TRAILER_DTYPE)
        trailer["index_offset"] = index_offset
        trailer["index_size"] = len(index)
        trailer["n_blocks"] = len(self._blocks)
        trailer["n_records"] = len(records)
        trailer["index_hash"] = index_hash
        trailer["version"] = FORMAT_VERSION
        trailer["flags"] = self._flags
        trailer["magic"] = MAGIC
        self._write(index)
        self._write(trailer.tobytes())
        return ShardSummary(
            records=len(records),
            bytes=self.bytes_written,
            blocks=len(self._blocks),
            raw_bytes=self.raw_bytes,
            hash=index_hash,
        )

    def _record_table(self, blocks: np.ndarray, records: np.ndarray) -> bytes:
        """The record table's bytes: an entry per record, or in the fixed layout the record
        size and a checksum per record (where each record lies follows from the blocks)."""
        if not self._flags & FLAG_FIXED_SIZE:
            return records.tobytes()
        # Equal records are cut into blocks of equal counts (add and add_many cut alike),
        # which is what lets a reader compute their places: say so rather than write a shard
        # that reads wrong.
        counts = blocks["n_records"]
        if len(counts) and ((counts[:-1] != counts[0]).any() or counts[-1] > counts[0]):
            raise RuntimeError(f"fixed-size records cut into blocks of {counts.tolist()} records")
        size = np.array(self._record_size, RECORD_SIZE_DTYPE).tobytes()
        if self._group == 1:
            return size + records["checksum"].astype(CHECKSUM_DTYPE).tobytes()
        sums = np.concatenate(self._group_sums) if self._group_sums else np.zeros(0)
        group = np.array(self._group, GROUP_DTYPE).tobytes()
        return size + group + sums.astype(CHECKSUM_DTYPE).tobytes()


def _group_checksums(raw, offsets, lengths, group: int) -> np.ndarray:
    """The checksums of a block's records in groups of ``group`` from its first: each over
    its records' bytes end to end, from the first one's start to the last one's end."""
    offsets = np.asarray(offsets, np.uint64)
    lengths = np.asarray(lengths, np.uint64)
    starts = np.arange(0, len(offsets), group)
    lasts = np.minimum(starts + group, len(offsets)) - 1
    spans = offsets[lasts] + lengths[lasts] - offsets[starts]
    return record_checksums(raw, offsets[starts], spans)


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k
