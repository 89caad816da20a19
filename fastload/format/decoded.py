"""Decompressed blocks: decompressed once, kept as checked copies on local disk where there is
room (mapped by every process that reads them), else in memory, bounded in bytes.

A record of a compressed block can only be read by decompressing the whole block (~1 MB: a
few hundred token rows or thousands of text records). Read at random (a shuffled epoch), every
record would decompress its block again. A dataset's shard readers share one of these per
process:

- with a *copy store* (the read side attaches one: decompressed copies in the local block
  cache, see ``fastload.read.copies``), a block decompressed once is written to disk and every
  process, in every epoch, maps that copy instead of decompressing it again: a compressed
  dataset reads like a raw one from its second epoch, whatever its size against memory, as
  long as the copies fit the cache's byte limit. Copies mapped here are kept mapped up to
  ``mapped`` blocks (the least recently used let go first); mapped pages are the page
  cache's, shared by every process, not this process's memory.
- without one, or for a block the store cannot take, decompressed blocks stay in this
  process's memory up to ``limit`` bytes (``Dataset(block_cache=)``), least recently used
  dropped first: a dataset whose decompressed size fits is decompressed once per process and
  then read like a raw one; a larger one gets the hits its size allows.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Callable, Protocol, Union

__all__ = ["DecodedBlocks", "CopyStore", "DEFAULT_DECODED_LIMIT", "DEFAULT_MAPPED_COPIES"]

#: Bytes of decompressed blocks a dataset keeps in memory per process unless told otherwise.
DEFAULT_DECODED_LIMIT = 128 << 20
#: Decompressed copies a process keeps mapped (each a map: well under the usual limit of
#: 65,530 maps a process, beside the shards' and the remote cache's).
DEFAULT_MAPPED_COPIES = 4096

Block = Union[bytes, memoryview]  # (a module-level alias: evaluated on Python 3.9 too)


class CopyStore(Protocol):
    """Where decompressed blocks are kept for every process (on local disk): a copy is checked
    against the block's record checksums when it is mapped, so a damaged one is never
    handed out (it is deleted, and the block decompressed again)."""

    def get(self, key: Hashable) -> memoryview | None:
        """The block's copy, mapped and checked; None if there is none (or it was bad)."""
        ...

    def put(self, key: Hashable, raw: Block) -> memoryview | None:
        """Store ``raw`` (decompressed from a block that passed its checksum); returns the
        stored copy mapped, or None where it was not stored (no room, no disk)."""
        ...


class DecodedBlocks:
    """Decompressed blocks keyed by (shard, block): checked copies mapped from a
    :class:`CopyStore` when one is attached, else an LRU in memory holding at most ``limit``
    bytes (a block larger than the limit is not kept). Safe to share between threads; a
    forked child starts with the parent's blocks and maps, and a fresh lock."""

    def __init__(self, limit: int, mapped: int = DEFAULT_MAPPED_COPIES) -> None:
        if limit < 0:
            raise ValueError(f"block_cache must be >= 0 bytes, got {limit}")
        self.limit = limit
        self.mapped_limit = mapped
        self.bytes = 0
        self.hits = 0
        self.misses = 0  # decompressions: blocks not found here
        self.copies_mapped = 0  # blocks found in the copy store (decompressed before)
        self.dropped = 0  # blocks let go (a holder of references to blocks checks it)
        self.store: CopyStore | None = None
        self._reported = 0  # misses already counted by take_decompressed()
        self._blocks: OrderedDict[Hashable, Block] = OrderedDict()
        self._mapped: OrderedDict[Hashable, memoryview] = OrderedDict()
        self._making: dict[Hashable, threading.Event] = {}  # blocks a thread decompresses now
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._blocks) + len(self._mapped)

    def attach(self, store: CopyStore | None) -> None:
        """Keep decompressed blocks in ``store`` from now on (None: in memory only)."""
        self.store = store

    def _locked(self) -> threading.Lock:
        if self._pid != os.getpid():  # forked: a parent's thread may have held the lock
            self._lock, self._pid = threading.Lock(), os.getpid()
            self._reported = self.misses  # the parent's decompressions are the parent's
            self._making = {}  # the parent's threads are not here to finish theirs
        return self._lock

    def _found(self, key: Hashable) -> Block | None:
        """The block if it is here (memory or mapped), marked recently used. Lock held."""
        raw = self._blocks.get(key)
        if raw is not None:
            self._blocks.move_to_end(key)
            return raw
        view = self._mapped.get(key)
        if view is not None:
            self._mapped.move_to_end(key)
        return view

    def get(self, key: Hashable) -> Block | None:
        with self._locked():
            raw = self._found(key)
            if raw is None:
                self.misses += 1
                return None
            self.hits += 1
            return raw

    def get_or_make(self, key: Hashable, make: Callable[[], Block]) -> Block:
        """The block for ``key``: kept here, or its copy in the store (mapped and checked), or
        made by ``make()`` (decompressed) and stored. Threads that ask for a block another is
        making wait for it rather than decompress it again (two thread workers reading
        neighbouring batches did, ~40-70% of the blocks twice); if that thread fails, or the
        block could not be kept, they make it themselves."""
        while True:
            with self._locked():
                raw = self._found(key)
                if raw is not None:
                    self.hits += 1
                    return raw
                making = self._making.get(key)
                if making is None:
                    making = self._making[key] = threading.Event()
                    break
            making.wait()
        try:
            return self._copy_or_make(key, make)
        finally:
            with self._locked():
                self._making.pop(key, None)
            making.set()

    def _copy_or_make(self, key: Hashable, make: Callable[[], Block]) -> Block:
        store = self.store
        view = store.get(key) if store is not None else None
        if view is not None:
            with self._locked():
                self.copies_mapped += 1
            self._keep_mapped(key, view)
            return view
        with self._locked():
            self.misses += 1
        raw = make()
        view = store.put(key, raw) if store is not None else None
        if view is not None:
            self._keep_mapped(key, view)
            return view
        self.put(key, raw)
        return raw

    def map_copy(self, key: Hashable) -> bool:
        """Whether the block is here, mapping its copy from the store if it has one (a
        loader maps every copy before it forks its workers, which then start with them)."""
        if self.peek(key) is not None:
            return True
        view = self.store.get(key) if self.store is not None else None
        if view is None:
            return False
        self._keep_mapped(key, view)
        return True

    def _keep_mapped(self, key: Hashable, view: memoryview) -> None:
        with self._locked():
            self._mapped[key] = view
            while len(self._mapped) > self.mapped_limit:
                self._mapped.popitem(last=False)  # unmapped when its last view goes
                self.dropped += 1

    def peek(self, key: Hashable) -> Block | None:
        """The block if it is here, without counting or reordering."""
        raw = self._blocks.get(key)
        return raw if raw is not None else self._mapped.get(key)

    def put(self, key: Hashable, raw: Block) -> None:
        """Keep ``raw`` in memory (within ``limit``)."""
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
            self.dropped += len(self._blocks) + len(self._mapped)
            self._blocks.clear()
            self._mapped.clear()
            self.bytes = 0

    def __getstate__(self) -> dict:
        # A process started by spawn gets the limits, not the blocks (nor the lock, nor the
        # store: its dataset attaches its own).
        return {"limit": self.limit, "mapped": self.mapped_limit}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["limit"], state.get("mapped", DEFAULT_MAPPED_COPIES))
