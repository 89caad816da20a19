"""Decompressed blocks kept in memory, bounded in bytes, least recently used dropped first.

A record of a compressed block can only be read by decompressing the whole block (~1 MB: a
few hundred token rows or thousands of text records). Read in storage order, each block is
decompressed once; read at random (a shuffled epoch), every record would decompress its block
again. A dataset's shard readers share one of these per process, so a compressed dataset whose
decompressed size fits the limit is decompressed once per process and then read like a raw
one; a larger one still gets the hits its size allows (see the loader's warning).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Callable

__all__ = ["DecodedBlocks", "DEFAULT_DECODED_LIMIT"]

#: Bytes of decompressed blocks a dataset keeps per process unless told otherwise.
DEFAULT_DECODED_LIMIT = 128 << 20


class DecodedBlocks:
    """An LRU of decompressed blocks, keyed by (shard, block), holding at most ``limit``
    bytes (a block larger than the limit is not kept). Safe to share between threads; a
    forked child starts with the parent's blocks and a fresh lock."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"block_cache must be >= 0 bytes, got {limit}")
        self.limit = limit
        self.bytes = 0
        self.hits = 0
        self.misses = 0  # decompressions: blocks not found here
        self.dropped = 0  # blocks let go (a holder of references to blocks checks it)
        self._reported = 0  # misses already counted by take_decompressed()
        self._blocks: OrderedDict[Hashable, bytes] = OrderedDict()
        self._making: dict[Hashable, threading.Event] = {}  # blocks a thread decompresses now
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._blocks)

    def _locked(self) -> threading.Lock:
        if self._pid != os.getpid():  # forked: a parent's thread may have held the lock
            self._lock, self._pid = threading.Lock(), os.getpid()
            self._reported = self.misses  # the parent's decompressions are the parent's
            self._making = {}  # the parent's threads are not here to finish theirs
        return self._lock

    def get(self, key: Hashable) -> bytes | None:
        with self._locked():
            raw = self._blocks.get(key)
            if raw is None:
                self.misses += 1
                return None
            self._blocks.move_to_end(key)
            self.hits += 1
            return raw

    def get_or_make(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        """The block for ``key``: kept here, or made by ``make()`` (and kept). Threads that
        ask for a block another is making wait for it rather than decompress it again (two
        thread workers reading neighbouring batches did, ~40-70% of the blocks twice); if
        that thread fails, or the block was too large to keep, they make it themselves."""
        while True:
            with self._locked():
                raw = self._blocks.get(key)
                if raw is not None:
                    self._blocks.move_to_end(key)
                    self.hits += 1
                    return raw
                making = self._making.get(key)
                if making is None:
                    making = self._making[key] = threading.Event()
                    self.misses += 1
                    break
            making.wait()
        try:
            raw = make()
            self.put(key, raw)
            return raw
        finally:
            with self._locked():
                self._making.pop(key, None)
            making.set()

    def peek(self, key: Hashable) -> bytes | None:
        """The block if it is here, without counting or reordering."""
        return self._blocks.get(key)

    def put(self, key: Hashable, raw: bytes) -> None:
        size = len(raw)
        if size > self.limit:
            return
        with self._locked():
            if key in self._blocks:
                return
            self._blocks[key] = raw
            self.bytes += size
            while self.bytes > self.limit:
                _, old = self._blocks.popitem(last=False)
                self.bytes -= len(old)
                self.dropped += 1

    def take_decompressed(self) -> int:
        """Blocks decompressed in this process since the last call (by any thread: each
        counted once); the loader's workers report these with each batch."""
        with self._locked():
            n, self._reported = self.misses - self._reported, self.misses
        return n

    def clear(self) -> None:
        with self._locked():
            self.dropped += len(self._blocks)
            self._blocks.clear()
            self.bytes = 0

    def __getstate__(self) -> dict:
        # A process started by spawn gets the limit, not the blocks (nor the lock).
        return {"limit": self.limit}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["limit"])
