"""A dataset's shards as one process holds them: opened on first use (mapped locally, through a
remote store elsewhere), the block table of where records lie, remote read-ahead, and what a
forked loader worker keeps of it all (:class:`ShardSet`, the base of :class:`Dataset`)."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from fsspec.utils import get_protocol

from ..errors import FastloadError
from ..format.decoded import DEFAULT_DECODED_LIMIT, DecodedBlocks
from ..format.manifest import ShardInfo
from ..format.record import RecordLayout
from ..format.schema import Schema
from ..format.shard_reader import ShardReader
from ..format.spec import CODEC_NONE
from ..io.fs import child_session, is_local, join, open_fs, reopen_fs
from ..io.iostats import STATS
from ..io.remote import RemoteOptions, RemoteSource, RemoteStore, read_fs_options
from ..io.source import open_byte_source
from ..utils import parse_size
from .blocktable import BlockTable
from .contract import Storage
from .copies import DecompressedCopies
from .opening import display_name, protocol_of, read_manifest
from .readahead import (
    fetch_blocks,
    fetch_records,
    groups_by_shard,
    open_together,
    remote_source,
)
from .records import as_indices

__all__ = ["ShardSet", "WARM_SHARDS", "OPEN_AHEAD"]

_Self = TypeVar("_Self", bound="ShardSet")

WARM_SHARDS = 256  # shards ShardSet.prepare_workers looks at in the cache (file lookups)
OPEN_AHEAD = 64  # a remote dataset of at most this many shards opens them all for workers


class ShardSet:
    """A dataset's manifest and shards as this process holds them: each shard opened on first
    use (mapped locally; remotely, read through a :class:`RemoteStore` and its block cache),
    the block table of where records lie, remote read-ahead, and what a forked loader worker
    keeps of it all. Never pickled with its open shards; closed, it reopens them when used
    again. :class:`Dataset` adds the records on top."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        storage_options: dict[str, Any] | None = None,
        verify: bool = True,
        cache_dir: str | os.PathLike | Literal[False] | None = None,
        cache_limit: int | str | None = None,
        remote_options: RemoteOptions | None = None,
        block_cache: int | str = DEFAULT_DECODED_LIMIT,
        max_block_bytes: int | str | None = None,
        follow_symlinks: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.follow_symlinks = follow_symlinks
        self._decoded = DecodedBlocks(parse_size(block_cache))
        self.max_block_bytes = None if max_block_bytes is None else parse_size(max_block_bytes)
        self.storage_options = storage_options
        self.verify = verify
        protocol = get_protocol(self.path)
        local = protocol in ("file", "local")
        self._fs_options = storage_options if local else read_fs_options(protocol, storage_options)
        self._fs, self.root = open_fs(self.path, self._fs_options)
        self._parent_fs = None  # a forked child's: what it reopens (see fs)
        self.remote = not is_local(self._fs)
        self._pid = os.getpid()
        options = copy.copy(remote_options) if remote_options is not None else RemoteOptions()
        if cache_dir is not None:
            options.cache_dir = os.fspath(cache_dir) if cache_dir is not False else False
        elif remote_options is None and protocol_of(self.fs) == "memory":
            options.cache_dir = False  # nothing to gain from a disk copy of memory
        if cache_limit is not None:
            options.cache_limit = cache_limit
        self.remote_options = options
        self._store: RemoteStore | None = None
        self._child_session = None  # made before forking workers, for them (io.fs)
        if self.remote:
            _check_limit(options)
        self.manifest = read_manifest(
            self.fs, self.root, self.path, self._store_() if self.remote else None
        )
        self.schema: Schema = self.manifest.schema
        self._layout = RecordLayout(self.schema)
        self._starts = np.cumsum([0] + [s.records for s in self.manifest.shards], dtype=np.int64)
        self._readers: list[ShardReader | None] = [None] * len(self.manifest.shards)
        self._table: BlockTable | None = None  # where each record lies (block_table)
        self._built: dict = {}  # built_once's objects
        self._stale = 0  # counts views retired with a store or table replaced (version)

    # -- shards ---------------------------------------------------------------------------
    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.manifest.shards

    @property
    def fingerprint(self) -> str:
        """Identifies the dataset's content (changes if any shard changes)."""
        return self.manifest.fingerprint

    def __len__(self) -> int:
        return int(self._starts[-1])

    def shard_reader(self, s: int) -> ShardReader:
        """The reader of shard ``s``, opened (and its index validated) on first use."""
        self._own()
        reader = self._readers[s]
        if reader is None:
            info = self.manifest.shards[s]
            path = join(self.fs, self.root, info.path)
            remote = self._remote_source(s) if self.remote else None
            if remote is not None:
                source = remote
            else:
                root = None if self.follow_symlinks else self.root
                name = display_name(self.fs, path)
                source = open_byte_source(self.fs, path, name=name, root=root)
            try:
                try:
                    reader = self._reader(source, info, s)
                except FastloadError:
                    if remote is None or not remote.from_cache:
                        raise
                    remote.forget_cached()  # a bad cached header or index: fetch it anew
                    reader = self._reader(source, info, s)
                if remote is not None and remote.attach(reader.blocks):
                    reader = self._reopened(remote, reader, info, s)
            except BaseException:
                source.close()
                raise
            self._readers[s] = reader
            if self._table is not None:
                self._table.add(s, reader)
        return reader

    def _reopened(
        self, remote: RemoteSource, reader: ShardReader, info: ShardInfo, s: int
    ) -> ShardReader:
        """Shard ``s``'s reader opened again from the cache, where its fetched index is now:
        read in place (mapped) rather than from the fetched copy, which this process would
        otherwise hold as long as the shard is open. ``reader`` if that fails."""
        try:
            again = self._reader(remote, info, s)
        except FastloadError:
            remote.forget_cached()
            again = reader
        remote.attach(again.blocks)
        return again

    def _reader(self, source: Any, info: ShardInfo, s: int) -> ShardReader:
        if self._decoded.store is None and not self.remote:
            cache_dir = self.remote_options.cache_dir
            if cache_dir is not False:  # a spawned child attaches its own, as it opens a shard
                store = DecompressedCopies(self, cache_dir, self.remote_options.cache_limit)
                self._decoded.attach(store)
        return ShardReader(
            source,
            expected=info,
            verify=self.verify,
            decoded=self._decoded,
            key=s,
            max_block_bytes=self.max_block_bytes,
            block_size=self.manifest.block_size,
            layout=self._layout,
        )

    def shard_path(self, s: int) -> str:
        """Where shard ``s`` is (its path or URL)."""
        return join(self.fs, self.root, self.manifest.shards[s].path)

    def _remote_source(self, s: int) -> RemoteSource:
        info = self.manifest.shards[s]
        path = join(self.fs, self.root, info.path)
        return RemoteSource(self._store_(), path, display_name(self.fs, path), info)

    def block_table(self) -> BlockTable:
        """Where each record lies (see :class:`BlockTable`; read from the open shards'
        indexes in place: it costs nothing per record), kept as shards open and dropped on
        close and fork. Per-batch work (read-ahead hints, the one-call gathers, block
        numbers) then needs no per-shard numpy work."""
        if self._table is None:
            self._table = BlockTable(self._starts, self.block_base(), self.remote)
            for s, reader in enumerate(self._readers):
                if reader is not None:
                    self._table.add(s, reader)
        return self._table

    def block_base(self) -> np.ndarray:
        """The dataset-wide number of each shard's first block (worked out once)."""
        base = self.__dict__.get("_first_blocks")
        if base is None:
            base = self._first_blocks = np.cumsum(
                [0] + [s.blocks for s in self.shards], dtype=np.int64
            )
        return base

    @property
    def record_layout(self) -> RecordLayout:
        """How a record's bytes are laid out (where each fixed-size field lies)."""
        return self._layout

    @property
    def record_starts(self) -> np.ndarray:
        """The dataset index of each shard's first record, and the record count at the end."""
        return self._starts

    def built_once(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """``make()``, made once per process for ``key`` from the shards open here, and let go
        when the dataset closes (never pickled)."""
        built = self._built
        if key not in built:
            built[key] = make()
        return built[key]

    @property
    def version(self) -> int:
        """Goes up whenever views of storage taken earlier in this process may have gone
        stale: a mapped block let go, a decompressed block dropped from the block cache, a
        shard opened, the dataset closed, a remote one forked (see
        :class:`fastload.read.Readable`)."""
        self._own()
        store, table = self._store, self._table
        return (
            self._stale
            + self._decoded.dropped
            + (store.maps_dropped if store is not None else 0)
            + (table.shards_added if table is not None else 0)
        )

    def _retire_views(self) -> None:
        """The store or the block table is about to be replaced, and their counters with them:
        what they said goes into ``_stale``, so that ``version`` still goes up."""
        store, table = self._store, self._table
        self._stale += 1 + (store.maps_dropped if store is not None else 0)
        self._stale += table.shards_added if table is not None else 0

    def take_decompressed(self) -> int:
        """Blocks decompressed in this process since the last call (by any thread)."""
        return self._decoded.take_decompressed()

    def storage(self) -> list[Storage]:
        """Facts about this dataset's storage, for the loader's choices and warnings."""
        shards = self.manifest.shards
        return [
            Storage(
                name=self.path,
                records=len(self),
                stored_bytes=self.manifest.bytes,
                raw_bytes=sum(s.raw_bytes for s in shards),
                blocks=sum(s.blocks for s in shards),
                block_cache=self._decoded.limit,
                copy_limit=self._copy_limit(),
            )
        ]

    def _copy_limit(self) -> int:
        """Bytes of decompressed copies the block cache may hold (0: blocks are not copied)."""
        if self.remote or self.remote_options.cache_dir is False:
            return 0
        return parse_size(self.remote_options.cache_limit)

    @property
    def fs(self):
        """The dataset's fsspec filesystem. A forked child (a loader worker) makes its own at
        first use: the parent's connections and event loop are not usable there."""
        if self.remote:
            self._own()
        if self._fs is None:
            self._fs, _ = reopen_fs(
                self._parent_fs, self.path, self._fs_options, session=self._child_session
            )
            self._parent_fs = None
            self._child_session = None  # this process's children get their own
        return self._fs

    # -- remote reads -----------------------------------------------------------------------
    def _own(self) -> None:
        """Start afresh if this is a forked child of the process that opened things."""
        if self.remote and self._pid != os.getpid():
            self._forked()

    def _forked(self) -> None:
        """In a forked child: the parent's connections, event loop and threads are not ours
        (fsspec's async filesystems refuse to run there), so the filesystem, the fetch pool
        and the locks start afresh. What the parent opened (shard indexes, the block table,
        cached blocks mapped and checked; see :meth:`prepare_workers`) is kept: it is plain
        memory and read-only maps, and opening it again cost each new worker more than a
        short epoch's reading. Read-ahead the parent had in flight is dropped (its threads
        are not here to finish it)."""
        self._pid = os.getpid()
        self._retire_views()
        parent = self._store
        self._store = None
        if self._fs is not None:  # reopened at first use (fs), often never: see RemoteStore
            self._parent_fs, self._fs = self._fs, None
        if parent is None:
            self._readers = [None] * len(self._readers)
            self._table = None
            return
        store = self._store = RemoteStore(
            functools.partial(_fs_of, self), self.remote_options, parent=parent
        )
        for reader in self._readers:
            if reader is not None:
                remote_source(reader).adopt(store)

    def prepare_workers(self) -> int:
        """Remote: what the loader does before it forks its workers, which then start with
        all of it (see :meth:`_forked`) instead of each doing it again, every epoch unless
        workers persist. A dataset of at most ``OPEN_AHEAD`` shards has them all opened (at
        once: one round trip), so that no worker waits for a shard it first meets late in an
        epoch; the shards whose header and index are cached are opened either way, and
        their cached blocks mapped (each checked once, up to ``mapped_blocks``). Returns the
        number of blocks mapped now. Local: :meth:`_map_copies`."""
        if not self.remote:
            return self._map_copies()
        if self._child_session is None:
            self._child_session = child_session(self.fs)
        if len(self._readers) <= OPEN_AHEAD:
            closed = [s for s, reader in enumerate(self._readers) if reader is None]
            self._open_shards(closed)
            if len(closed) == 1:  # _open_shards leaves a single one to its reader
                with contextlib.suppress(FastloadError):
                    self.shard_reader(closed[0])
        store = self._store_()
        if store.cache is None:
            return 0
        room = self.remote_options.mapped_blocks - len(store.maps)
        mapped = 0
        for s in range(min(len(self._readers), WARM_SHARDS)):
            if mapped >= room:
                break
            if self._readers[s] is None and not self._remote_source(s).opens_from_cache():
                continue
            try:
                reader = self.shard_reader(s)
            except FastloadError:
                continue  # left for the read that needs it to raise
            for b in range(len(reader.blocks)):
                if mapped >= room:
                    break
                mapped += remote_source(reader).map_cached(b)
        return mapped

    def _map_copies(self) -> int:
        """Local and compressed: the decompressed copies of its blocks in the block cache
        (``fastload.read.copies``), mapped and checked here once, so that forked workers start
        with them; workers started afresh each epoch had each mapped and checked every copy
        again (~0.1 ms a 1 MiB block: ~10% of an epoch of token rows). Up to the copies this
        process keeps mapped, in the first ``WARM_SHARDS`` shards. Returns the blocks mapped."""
        if not any(s.compressed for s in self.storage()):
            return 0
        mapped = 0
        limit = self._decoded.mapped_limit
        for s in range(min(len(self._readers), WARM_SHARDS)):
            try:
                reader = self.shard_reader(s)  # (attaches the copy store)
            except FastloadError:
                continue  # left for the read that needs it to raise
            if self._decoded.store is None:
                return 0
            for b in np.flatnonzero(reader.blocks["codec"] != CODEC_NONE).tolist():
                if mapped >= limit:
                    return mapped
                mapped += self._decoded.map_copy((s, b))  # (not copied yet: ~5 us to learn)
        return mapped

    def _store_(self) -> RemoteStore:
        self._own()
        if self._store is None:
            fs = self._fs if self._fs is not None else functools.partial(_fs_of, self)
            self._store = RemoteStore(fs, self.remote_options)
        return self._store

    @property
    def cache(self):
        """The local block cache of a remote dataset (a :class:`fastload.io.cache.BlockCache`),
        or None."""
        return self._store_().cache if self.remote else None

    def prefetch(self, indices: Sequence[int] | np.ndarray) -> int:
        """Start fetching, in background threads, the blocks holding records ``indices`` (in
        the order given: the soonest first), neighbouring blocks in one ranged GET. A no-op for
        local datasets. Returns how many blocks were scheduled; never raises for a bad index
        (reading that record will)."""
        if not self.remote:
            return 0
        self._own()
        if self._all_mapped():
            return 0  # nothing to fetch: a warm loader worker's hints cost ~4 us per batch
        idx = as_indices(indices)
        n = len(self)
        idx = idx[(idx >= -n) & (idx < n)]
        if not len(idx):
            return 0
        idx = np.where(idx < 0, idx + n, idx)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        table = self.block_table()
        blocks = table.block_numbers(idx)
        if int(blocks.min()) >= 0:  # every shard open: the common case, once running
            in_shard = blocks - table.base[shard_of]
            return fetch_blocks(self._readers, shard_of.tolist(), in_shard.tolist())
        return self.prefetch_records(groups_by_shard(idx, shard_of, self._starts))

    def _all_mapped(self) -> bool:
        """Whether every shard is open here and every block mapped from the cache (maps hold
        this dataset's blocks only: at most one each)."""
        store = self._store
        if store is None or not store.maps:
            return False
        table = self.block_table()
        return table.shards_added == len(self._readers) and len(store.maps) >= int(table.base[-1])

    def prefetch_records(self, groups: list[tuple[int, np.ndarray]]) -> int:
        """:meth:`prefetch` of ``(shard, records in it)`` pairs, in the order given. It runs
        for every batch (the loader's hint, then the read itself)."""
        self._open_shards([s for s, _ in groups])
        return fetch_records(self.shard_reader, groups)

    def _open_shards(self, shards: list[int]) -> None:
        """Open the remote shards among ``shards`` not opened yet, several at once."""
        todo = [s for s in shards if self._readers[s] is None]
        if len(todo) >= 2:
            self._store_()  # created once, here, not by racing threads
            open_together(self.shard_reader, todo, self.remote_options.concurrency)

    def io_stats(self) -> dict:
        """Counters of remote reads in this process: ``requests``, ``retries``, ``errors``,
        ``bytes_fetched``, ``cache_hits``, ``cache_misses``, ``cache_bytes_read``,
        ``cache_bytes_written``, ``cache_corrupt``, ``cache_evicted_bytes``,
        ``prefetched_blocks``, ``prefetch_hits``, ``wait_seconds``."""
        return STATS.as_dict()

    def io_stats_delta(self) -> dict:
        """The counters of :meth:`io_stats` that moved since the last call (in this process);
        the loader's workers send these with each batch."""
        return STATS.delta()

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap every open shard (the dataset reopens them if used again)."""
        self._retire_views()
        for i, reader in enumerate(self._readers):
            if reader is not None:
                reader.close()
                reader.source.close()
                self._readers[i] = None
        self._table = None
        self._built = {}
        self._decoded.clear()
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = [None] * len(self._readers)
        state["_table"] = None
        state["_built"] = {}
        state["_store"] = None  # threads and open connections stay in this process
        state["_child_session"] = None
        state["_fs"] = self._fs if self._fs is not None else self._parent_fs
        state["_parent_fs"] = None
        return state


def _fs_of(dataset: ShardSet):
    return dataset.fs


def _check_limit(options: RemoteOptions) -> None:
    parse_size(options.cache_limit)  # a bad size fails here, not in a worker
