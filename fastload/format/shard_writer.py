"""Writes one shard file: header, blocks, index, trailer (layout in spec.py)."""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

from .checksum import hash64, record_checksum
from .codec import BlockCompressor
from .spec import (
    BLOCK_DTYPE,
    FORMAT_VERSION,
    HEADER_DTYPE,
    MAGIC,
    MAX_BLOCK_RAW_SIZE,
    RECORD_ALIGN,
    RECORD_DTYPE,
    TRAILER_DTYPE,
)

__all__ = ["ShardWriter", "ShardSummary"]


class ShardSummary(dict):
    """What the manifest records of a finished shard (records, bytes, blocks, raw_bytes, hash)."""


class ShardWriter:
    """Appends encoded records to a shard, cutting blocks of about ``block_size`` raw bytes.

    The caller owns ``out`` (a binary file object opened for writing) and decides when the
    shard is full by looking at :attr:`bytes_written`.
    """

    def __init__(self, out: BinaryIO, compressor: BlockCompressor, block_size: int) -> None:
        if block_size <= 0 or block_size > MAX_BLOCK_RAW_SIZE:
            raise ValueError(f"block_size must be in 1..{MAX_BLOCK_RAW_SIZE}, got {block_size}")
        self._out = out
        self._compressor = compressor
        self._block_size = block_size
        self._block = bytearray()
        self._block_records: list[tuple[int, int, int]] = []  # (offset, length, checksum)
        self._blocks: list[tuple] = []
        self._records: list[tuple[int, int, int, int]] = []
        self.bytes_written = 0
        self.raw_bytes = 0
        header = np.zeros((), HEADER_DTYPE)
        header["magic"] = MAGIC
        header["version"] = FORMAT_VERSION
        self._write(header.tobytes())

    @property
    def records_written(self) -> int:
        return len(self._records) + len(self._block_records)

    def _write(self, data) -> None:
        self._out.write(data)
        self.bytes_written += len(data)

    def add(self, record: bytes) -> None:
        """Append one encoded record."""
        if len(record) > MAX_BLOCK_RAW_SIZE:
            raise ValueError(f"record of {len(record)} bytes exceeds the {MAX_BLOCK_RAW_SIZE} limit")
        # A record never straddles blocks: a big one closes the current block and gets its own.
        aligned = -len(self._block) % RECORD_ALIGN
        if self._block_records and len(self._block) + aligned + len(record) > self._block_size:
            self._flush_block()
            aligned = 0
        self._block += b"\0" * aligned
        self._block_records.append((len(self._block), len(record), record_checksum(record)))
        self._block += record
        if len(self._block) >= self._block_size:
            self._flush_block()

    def _flush_block(self) -> None:
        if not self._block_records:
            return
        codec, stored = self._compressor.compress(self._block)
        block_index = len(self._blocks)
        self._blocks.append(
            (self.bytes_written, len(stored), len(self._block), len(self._records),
             len(self._block_records), codec, b"", hash64(stored))
        )  # fmt: skip
        self._records.extend((block_index, o, n, c) for o, n, c in self._block_records)
        self._write(stored)
        self.raw_bytes += len(self._block)
        self._block = bytearray()
        self._block_records = []

    def finish(self) -> ShardSummary:
        """Write the last block, the index and the trailer; return the manifest entry."""
        self._flush_block()
        index = (
            np.array(self._blocks, dtype=BLOCK_DTYPE).tobytes()
            + np.array(self._records, dtype=RECORD_DTYPE).tobytes()
        )
        index_offset = self.bytes_written
        index_hash = hash64(index)
        trailer = np.zeros((), TRAILER_DTYPE)
        trailer["index_offset"] = index_offset
        trailer["index_size"] = len(index)
        trailer["n_blocks"] = len(self._blocks)
        trailer["n_records"] = len(self._records)
        trailer["index_hash"] = index_hash
        trailer["version"] = FORMAT_VERSION
        trailer["magic"] = MAGIC
        self._write(index)
        self._write(trailer.tobytes())
        return ShardSummary(
            records=len(self._records),
            bytes=self.bytes_written,
            blocks=len(self._blocks),
            raw_bytes=self.raw_bytes,
            hash=index_hash,
        )
