"""One remote shard as the shard reader's byte source: its header and index fetched at open
(from the cache when another process stored them), its blocks from read-ahead, the cache
(mapped, checked once) or a ranged GET, each checked against the index's checksum and fetched
once across every process sharing the cache."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from concurrent.futures import Future

import numpy as np

from ...format.checksum import hash64
from ...format.manifest import ShardInfo
from ..cache import BlockCache
from ..iostats import STATS
from .readahead import ReadAhead
from .store import RemoteStore

__all__ = ["RemoteSource", "HEADER_BYTES"]

_UIDS = itertools.count()
HEADER_BYTES = 32  # a shard's header, read first at open


class RemoteSource:
    """The byte source of one remote shard (see ``ByteSource`` in format/shard_reader.py)."""

    buffer = None
    whole_blocks = True  # the shard reader reads whole blocks (the unit of the cache)

    def __init__(self, store: RemoteStore, path: str, url: str, info: ShardInfo) -> None:
        self.store, self.path, self.name = store, path, url
        self.size = int(info.bytes)
        self.hash = info.hash
        self._tail_start = max(0, self.size - store.options.tail_bytes)
        # header, tail: start -> bytes (or their fetch under way, and whether it fetched)
        self._regions: dict[int, bytes | memoryview | Future[tuple[bytes | memoryview, bool]]] = {}
        self._fresh: dict[int, bytes | memoryview] = {}  # regions fetched (not from the cache)
        self.from_cache = False
        #: The shard's block table (``attach``, once the shard reader validated it).
        self.blocks: np.ndarray | None = None
        self._block_at: dict[int, int] = {}
        self._last = -2
        self._unchecked: set[int] = set()  # blocks handed out that failed their checksum
        #: Names the shard's blocks in ``store.maps``: ``(uid, block)``.
        self.uid = next(_UIDS)
        self.readahead = ReadAhead(self)

    def __getstate__(self):
        raise TypeError("a RemoteSource is not picklable; pickle the Dataset instead")

    def adopt(self, store: RemoteStore) -> None:
        """In a forked child: read through ``store`` (this process's); the parent's locks
        may have been held at the fork and its read-ahead will never finish here."""
        self.store = store
        self.readahead.forked()
        self._regions = {k: v for k, v in self._regions.items() if not isinstance(v, Future)}

    def opens_from_cache(self) -> bool:
        """Whether the header and tail read at open are both in the cache."""
        cache = self.store.cache
        if cache is None:
            return False
        regions = [(self._tail_start, self.size)]
        if self._tail_start > 0:
            regions.append((0, HEADER_BYTES))
        return all(
            cache.has(self.name, self.hash, self.size, start, end - start) for start, end in regions
        )

    def map_cached(self, b: int) -> bool:
        """Map block ``b``'s cached copy (checked) if there is one and it is not mapped yet;
        True if it was mapped now. No request; not counted as consumed."""
        key = (self.uid, b)
        cache = self.store.cache
        if cache is None or key in self.store.maps:
            return False
        offset, length, checksum = self.entry(b)
        data = cache.get(self.name, self.hash, self.size, offset, length, checksum, consume=False)
        if data is None:
            return False
        self.store.keep_mapped(key, data)
        return True

    # -- the ByteSource protocol ------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes | memoryview:
        from ...errors import ShardFormatError

        if offset < 0 or length < 0 or offset + length > self.size:
            raise ShardFormatError(
                f"{self.name}: read of {length} bytes at offset {offset} is "
                f"past the end of the {self.size}-byte file"
            )
        b = self._block_at.get(offset)
        if b is not None and int(self.table["stored_size"][b]) == length:
            return self.block(b)
        if offset >= self._tail_start:  # trailer, index; all of a small shard
            tail = self._region(self._tail_start, self.size)
            return tail[offset - self._tail_start : offset - self._tail_start + length]
        if offset == 0 and length == HEADER_BYTES:
            if self._tail_start > 0 and self._tail_start not in self._regions:
                # The index is read next: its round trip overlaps the header's.
                self._regions[self._tail_start] = self.store.pool.submit(
                    self._fetch_region, self._tail_start, self.size
                )
            return self._region(0, HEADER_BYTES)
        if self.blocks is None:
            # The index, larger than the tail: a region of its own in the cache, so that
            # every process maps it (attach() stores it) rather than holding a copy.
            return self._region(offset, offset + length)
        return self.store.get_range(self.path, self.name, offset, offset + length)

    def _region(self, start: int, end: int) -> bytes | memoryview:
        """The header or the tail: from the cache (a copy the shard reader validated when it
        was stored: it checks both against the manifest again), else fetched."""
        got = self._regions.get(start)
        if isinstance(got, Future):
            got = got.result()
        elif got is None:
            got = self._fetch_region(start, end)
        else:
            return got
        data, fresh = got
        if fresh:
            self._fresh[start] = data
        else:
            self.from_cache = True
        self._regions[start] = data
        return data

    def _fetch_region(self, start: int, end: int) -> tuple[bytes | memoryview, bool]:
        """A region's bytes from the cache, else fetched; and whether they were fetched."""
        cache = self.store.cache
        if cache is not None:
            got = cache.get(self.name, self.hash, self.size, start, end - start, None)
            if got is not None:
                return got, False
        return self.store.get_range(self.path, self.name, start, end), True

    def forget_cached(self) -> None:
        """The shard reader rejected what came from the cache: drop those copies."""
        cache = self.store.cache
        for start, data in self._regions.items():
            if start not in self._fresh and cache is not None and not isinstance(data, Future):
                cache.discard(self.name, self.hash, self.size, start, len(data))
        self._regions.clear()
        self._fresh.clear()
        self.from_cache = False

    def attach(self, blocks: np.ndarray) -> bool:
        """Learn the block table (validated by the shard reader); the regions read at open
        are no longer needed. Returns whether an index larger than the tail was fetched and
        is in the cache now: the shard reader is better opened again, from the cache, to
        read it where it lies (mapped, shared by every process) than to keep its copy; this
        source then reads as before ``attach`` until it is attached again."""
        self.blocks = blocks
        self._block_at = {int(o): i for i, o in enumerate(blocks["offset"])}
        cache = self.store.cache
        index_cached = False
        if cache is not None:  # validated now: worth keeping for the next process
            for start, data in self._fresh.items():
                cache.put(self.name, self.hash, self.size, start, bytes(data))
                if start not in (0, self._tail_start):  # (stored now, or by another process)
                    index_cached |= cache.has(self.name, self.hash, self.size, start, len(data))
                self._cache_blocks_in(cache, start, data)
        self._regions.clear()
        self._fresh.clear()
        if index_cached:  # to be read again: as before attach() (its index a region)
            self.blocks, self._block_at = None, {}
        return index_cached

    def _cache_blocks_in(self, cache: BlockCache, start: int, data: bytes | memoryview) -> None:
        """Cache the blocks lying wholly inside fetched bytes ``data`` (at ``start``): the
        tail fetched at open holds the last blocks, and all of a small shard's."""
        offsets, sizes = self.table["offset"], self.table["stored_size"]
        inside = np.flatnonzero((offsets >= start) & (offsets + sizes <= start + len(data)))
        view = memoryview(data)
        for b in inside.tolist():
            offset, length, checksum = self.entry(b)
            piece = bytes(view[offset - start : offset - start + length])
            if hash64(piece) == checksum:
                cache.put(self.name, self.hash, self.size, offset, piece, ahead=True)

    def close(self) -> None:
        self.readahead.close()

    @property
    def table(self) -> np.ndarray:
        """The block table :meth:`attach` gave; asked for only once it did."""
        if self.blocks is None:
            raise RuntimeError(f"{self.name}: its block table is not known yet")
        return self.blocks

    # -- blocks ---------------------------------------------------------------------------
    def entry(self, b: int) -> tuple[int, int, int]:
        """Block ``b``'s offset in the shard, stored size and checksum."""
        e = self.table[b]
        return int(e["offset"]), int(e["stored_size"]), int(e["checksum"])

    def checked(self, b: int) -> bool:
        """Whether the bytes last returned for block ``b`` matched its checksum (the shard
        reader then need not hash them again)."""
        return b not in self._unchecked

    def resident(self, b: int) -> memoryview | None:
        """The stored bytes of block ``b`` if they are at hand already (a cached copy mapped
        and checked), else None; no I/O, no lock: the per-batch fast path of the shard
        reader."""
        return self.store.maps.get((self.uid, b))

    def block(self, b: int) -> bytes | memoryview:
        """The stored bytes of block ``b``: from read-ahead, the cache, or a ranged GET."""
        key = (self.uid, b)
        view = self.store.mapped(key)
        if view is not None:
            return view
        sequential = b == self._last + 1
        self._last = b
        fut = self.readahead.take(b)
        if sequential and self.store.options.readahead_blocks:
            n = len(self.table)
            self.prefetch(range(b + 1, min(n, b + 1 + self.store.options.readahead_blocks)))
        if fut is not None:
            start = time.perf_counter()
            try:
                data = fut.result()
            except Exception:
                data = None  # the fetch failed; fetched again below, to raise here if it must
            STATS.add("wait_seconds", time.perf_counter() - start)
            if data is not None:
                STATS.add("prefetch_hits")
                self._consumed(b)
                return data
        offset, length, checksum = self.entry(b)
        cache = self.store.cache
        if cache is not None:
            data = cache.get(self.name, self.hash, self.size, offset, length, checksum)
            if data is not None:
                STATS.add("cache_hits")
                self.store.keep_mapped(key, data)
                return data
            STATS.add("cache_misses")
        start = time.perf_counter()
        data = self.fetch_run([b], ahead=False)[b]
        STATS.add("wait_seconds", time.perf_counter() - start)
        return data

    def _consumed(self, b: int) -> None:
        cache = self.store.cache
        if cache is not None:
            offset, length, _ = self.entry(b)
            cache.touch(self.name, self.hash, self.size, offset, length)

    def cached(self, b: int) -> bool:
        """Whether block ``b`` is in the cache already (a file lookup)."""
        cache = self.store.cache
        if cache is None:
            return False
        offset, length, _ = self.entry(b)
        return cache.has(self.name, self.hash, self.size, offset, length)

    def prefetch(self, blocks: Iterable[int]) -> int:
        """Start fetching ``blocks`` in the background (see :meth:`ReadAhead.prefetch`);
        returns how many were scheduled."""
        return self.readahead.prefetch(blocks)

    def fetch_run(self, run: list[int], ahead: bool) -> dict[int, bytes | memoryview]:
        """Blocks ``run`` (consecutive), fetched once across every process sharing the cache:
        the blocks this process claims are downloaded (one GET per stretch of neighbours); a
        block another process is fetching is waited for, then read from the cache."""
        cache = self.store.cache
        if cache is None:
            return self._download(run, ahead)
        args = (self.name, self.hash, self.size)
        out: dict[int, bytes | memoryview] = {}
        claims = {}
        try:
            for b in run:
                claim = cache.claim(*args, self.entry(b)[0])
                if claim is not None:
                    claims[b] = claim
            todo = []
            for b in run:
                if b not in claims:
                    continue
                offset, length, checksum = self.entry(b)
                got = cache.get(*args, offset, length, checksum, consume=not ahead)
                if got is not None:  # stored by another process meanwhile
                    out[b] = got
                else:
                    todo.append(b)
            stretch: list[int] = []
            for b in todo + [None]:
                if stretch and (b is None or b != stretch[-1] + 1):
                    out.update(self._download(stretch, ahead))
                    stretch = []
                if b is not None:
                    stretch.append(b)
        finally:
            for claim in claims.values():
                cache.release(claim)
        for b in run:
            if b in out:
                continue
            offset, length, checksum = self.entry(b)
            claim = cache.wait_claim(*args, offset)
            try:
                got = cache.get(*args, offset, length, checksum, consume=not ahead)
                out[b] = got if got is not None else self._download([b], ahead)[b]
            finally:
                cache.release(claim)
        return out

    def _download(self, run: list[int], ahead: bool) -> dict[int, bytes | memoryview]:
        """Fetch consecutive blocks with one ranged GET; check each block's checksum (a block
        that fails is fetched once more on its own, then handed over unchecked, for the shard
        reader to report); store the good ones in the cache."""
        first, _, _ = self.entry(run[0])
        last_off, last_len, _ = self.entry(run[-1])
        data = self.store.get_range(self.path, self.name, first, last_off + last_len)
        view = memoryview(data)
        out: dict[int, bytes | memoryview] = {}
        cache = self.store.cache
        for b in run:
            offset, length, checksum = self.entry(b)
            piece = bytes(view[offset - first : offset - first + length]) if len(run) > 1 else data
            if hash64(piece) != checksum:
                piece = self.store.get_range(self.path, self.name, offset, offset + length)
                if hash64(piece) != checksum:
                    out[b] = piece  # corrupt at the source: never cached
                    self._unchecked.add(b)
                    continue
            self._unchecked.discard(b)
            if cache is not None:
                cache.put(self.name, self.hash, self.size, offset, piece, ahead=ahead)
            out[b] = piece
        return out
