"""Where each record of a dataset lies, for the shards open in this process: per-batch work
(read-ahead hints, block numbers, the one-call gather of blocks at hand) then needs no Python
per shard."""

from __future__ import annotations

import numpy as np

from ..format.shard_reader import ShardReader
from ..format.spec import CODEC_NONE

__all__ = ["BlockTable"]


class BlockTable:
    """Per record of the dataset: ``block_of`` (its block in its shard; -1: not open),
    ``offset`` (in the block), and ``gather_of``: a number per block of the dataset, -1 where
    the shard is not open or its records cannot be gathered straight (records shorter than
    their fixed part). Per block ``g``: ``entries[g]`` = ``(key in RemoteStore.maps, or None
    for a local dataset; shard reader; block in its shard; stored raw)``.

    ``starts``: the dataset index of each shard's first record (and the total at the end);
    ``base``: the dataset-wide number of each shard's first block (and the total);
    ``record_bytes``: the fixed part of every record."""

    def __init__(
        self, starts: np.ndarray, base: np.ndarray, record_bytes: int, remote: bool
    ) -> None:
        n = int(starts[-1])
        self.starts, self.base = starts, base
        self.record_bytes, self.remote = record_bytes, remote
        self.block_of = np.full(n, -1, np.int32)
        self.offset = np.zeros(n, np.uint32)
        self.gather_of = np.full(n, -1, np.int32)
        self.entries: list = [None] * int(base[-1])
        self.shards_added = 0
        self._rows: tuple | None = None  # gather_rows, until the next shard is added

    def add(self, s: int, reader: ShardReader) -> None:
        """Shard ``s`` is open: its records' places."""
        self.shards_added += 1
        self._rows = None
        a, b = self.starts[s], self.starts[s + 1]
        blocks = reader.records["block"]
        self.offset[a:b] = reader.records["offset"]
        self.block_of[a:b] = blocks  # last: -1 until the row is whole
        if reader.shortest >= self.record_bytes:
            base = int(self.base[s])
            uid = reader.source.uid if self.remote else None
            raw = (reader.blocks["codec"] == CODEC_NONE).tolist()
            self.entries[base : base + len(reader.blocks)] = [
                ((uid, g) if uid is not None else None, reader, g, raw[g])
                for g in range(len(reader.blocks))
            ]
            self.gather_of[a:b] = blocks + base

    def gather_rows(self) -> tuple:
        """Per record, as ``_core.gather_records`` takes them: its block's number (-1, not
        gatherable, is out of range as uint32), its offset in the block, the bytes it is
        known to have (its fixed part) and a checksum (unused: blocks at hand were checked
        whole). Made again only after a shard was added."""
        rows = self._rows
        if rows is None:
            n = len(self.gather_of)
            rows = self._rows = (
                self.gather_of.view(np.uint32),
                self.offset.astype(np.uint64),
                np.full(n, self.record_bytes, np.uint64),
                np.zeros(n, np.uint32),
            )
        return rows
