"""Decompressed copies of a local dataset's compressed blocks, kept in the local block cache.

A compressed block read at random costs its whole decompression for each record drawn from it
(a 1 MiB block of token rows: ~1-3 ms for a 4 KB row), in every process, every epoch. A
process's memory holds few such blocks (``Dataset(block_cache=)``, 128 MiB), and real datasets
are many times larger. So each block is decompressed once, by whichever loader worker or
process first needs it, and its decompressed bytes are written to the local block cache
(:class:`fastload.io.cache.BlockCache`: ``cache_dir``, at most ``cache_limit`` bytes for all
datasets, safe across processes, written whole and renamed, least recently used evicted
first). Every later read, in any process and any epoch, maps that copy: the page cache's pages,
shared, at the speed of an uncompressed dataset.

Checksums: a copy is checked when a process maps it, against the record checksums the shard's
index holds (each record's checksum is over its raw bytes, so the decompressed copy is checked
as the records themselves are); a copy that fails is deleted and the block decompressed again
from the shard, whose stored bytes are checked against their own checksum first. A copy just
written from bytes checked that way is not checked again: its writer maps the file it wrote
(:meth:`BlockCache.put_mapped`), and only a copy found there already, stored by another
process first, is checked before it is used.

Two processes may decompress the same block at the same moment: nothing coordinates them.
Workers reading a shuffled first epoch meet a fresh block together only early on, and make
well under 1% of the blocks twice; a claim per block (a lock file created, taken and removed
for every block) would cost more than the decompressions it saves.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from typing import TYPE_CHECKING, cast

from ..format.checksum import first_bad_record
from ..io.cache import BlockCache, default_cache_dir
from ..io.iostats import STATS
from ..io.mapping import release_pages

if TYPE_CHECKING:
    from .shards import ShardSet

__all__ = ["DecompressedCopies", "COPY_SUFFIX"]

COPY_SUFFIX = "#decompressed"  # the cache's name for a shard's copies: its path and this


class DecompressedCopies:
    """The :class:`fastload.format.decoded.CopyStore` of one local dataset: blocks keyed
    ``(shard, block)`` as its :class:`ShardSet` numbers them, stored in the block cache under
    the shard's path and content hash (a shard rewritten in place never reads old copies).
    The cache is opened on first use; where it cannot be (the default directory unusable),
    there are no copies, with a warning, and blocks stay in memory as before."""

    def __init__(self, shards: ShardSet, cache_dir: str | None, limit: int | str) -> None:
        self.shards = shards
        self._cache_dir, self._limit = cache_dir, limit
        self._cache: BlockCache | None = None
        self._failed = False
        self._shard_names: dict[int, tuple[str, str, int]] = {}

    @property
    def cache(self) -> BlockCache | None:
        if self._cache is None and not self._failed:
            try:
                self._cache = BlockCache(self._cache_dir or default_cache_dir(), self._limit)
            except OSError as e:
                if self._cache_dir:
                    raise  # the directory asked for is unusable: say so
                self._failed = True
                warnings.warn(
                    f"fastload: compressed blocks are not kept decompressed on disk (the "
                    f"default cache directory is not usable: {e}); pass cache_dir= or set "
                    "FASTLOAD_CACHE_DIR",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self._cache

    def _where(self, key: Hashable) -> tuple:
        """(url, content hash, size, block, raw size) of a block's copy in the cache."""
        s, b = cast("tuple[int, int]", key)
        shard = self._shard_names.get(s)
        if shard is None:  # (joining the path cost ~40 us a block, twice per block)
            info = self.shards.shards[s]
            url = self.shards.shard_path(s) + COPY_SUFFIX
            shard = self._shard_names[s] = (url, info.hash, info.raw_bytes)
        reader = self.shards.shard_reader(s)  # open already: its block is being read
        return (*shard, b, int(reader.blocks[b]["raw_size"]))

    def get(self, key: Hashable) -> memoryview | None:
        cache = self.cache
        if cache is None:
            return None
        url, content, size, b, length = self._where(key)
        view = cache.get(url, content, size, b, length, None)
        if view is None:
            return None
        if self._intact(key, view):
            release_pages(view)  # checked: its pages are mapped again as records are read
            return view
        STATS.add("cache_corrupt")
        cache.discard(url, content, size, b, length)
        return None

    def put(self, key: Hashable, raw) -> memoryview | None:
        cache = self.cache
        if cache is None:
            return None
        url, content, size, b, length = self._where(key)
        if len(raw) != length:
            return None  # (the reader raises for such a block before it gets here)
        view = cache.put_mapped(url, content, size, b, raw)
        if view is not None:
            return view  # written here from checked bytes: not checked again
        # Stored by another process first (checked then: not ours to trust), or not at all
        # (no room): map what is there.
        view = cache.get(url, content, size, b, length, None)
        if view is None or self._intact(key, view):
            return view
        STATS.add("cache_corrupt")
        cache.discard(url, content, size, b, length)
        return None

    def _intact(self, key: Hashable, view: memoryview) -> bool:
        """Whether every record of the block checks out in ``view`` (one pass over it)."""
        s, b = cast("tuple[int, int]", key)
        reader = self.shards.shard_reader(s)
        if not reader.verify:
            return True
        _, offsets, lengths, checksums = reader.index.in_block(b)
        if len(offsets) and int((offsets + lengths).max()) > len(view):
            return False
        return first_bad_record(view, offsets, lengths, checksums) < 0
