"""Where each record of a dataset lies, for the shards open in this process: per-batch work
(read-ahead hints, block numbers, the one-call gathers) then needs no Python per shard, and
nothing per record is kept: the compiled core reads the shards' own index bytes in place."""

from __future__ import annotations

import numpy as np

from .. import _core
from ..format.shard_reader import ShardReader
from ..format.spec import CODEC_NONE
from .readahead import remote_source

__all__ = ["BlockTable"]


class BlockTable:
    """The records of the shards open in this process (``map``, a ``_core.RecordMap`` over
    their index bytes: a mapped shard's are the page cache's own pages, shared by every
    process), and what holds each block of the dataset (:meth:`entry`).

    ``starts``: the dataset index of each shard's first record (and the total at the end);
    ``base``: the dataset-wide number of each shard's first block (and the total)."""

    def __init__(self, starts: np.ndarray, base: np.ndarray, remote: bool) -> None:
        self.starts, self.base, self.remote = starts, base, remote
        self.map = _core.RecordMap(
            np.ascontiguousarray(starts, np.int64), np.ascontiguousarray(base, np.int64)
        )
        self._readers: list[ShardReader | None] = [None] * (len(starts) - 1)
        self.shards_added = 0

    def add(self, s: int, reader: ShardReader) -> None:
        """Shard ``s`` is open: its records are placed from now on."""
        reader.add_to(self.map, s)  # (checked already, as the reader placed its own)
        self._readers[s] = reader
        self.shards_added += 1

    def block_numbers(self, idx: np.ndarray) -> np.ndarray:
        """The dataset-wide block number of each of records ``idx`` (int64), -1 where its
        shard is not open here (or the index is out of range)."""
        return self.map.block_numbers(np.ascontiguousarray(idx, np.int64))

    def entry(self, g: int) -> tuple:
        """Block ``g`` of the dataset (its shard open): ``(key in RemoteStore.maps, or None
        for a local dataset; shard reader; block in its shard; stored raw)``."""
        s = int(np.searchsorted(self.base, g, side="right")) - 1  # past empty shards
        reader = self._readers[s]
        if reader is None:
            raise KeyError(f"block {g}: its shard {s} is not open here")
        b = g - int(self.base[s])
        key = (remote_source(reader).uid, b) if self.remote else None
        return key, reader, b, bool(reader.blocks["codec"][b] == CODEC_NONE)
