"""Reading datasets: ``fastload.Dataset(path)`` gives random access to records by index."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from . import _core
from .errors import FastloadError, IncompleteDatasetError, ManifestError
from .format.decoded import DEFAULT_DECODED_LIMIT, DecodedBlocks
from .format.manifest import Manifest, ShardInfo
from .format.record import RecordDecodeError, RecordLayout
from .format.schema import Schema
from .format.shard_reader import ShardReader
from .format.spec import MANIFEST_NAME
from .io.fs import child_session, is_local, join, open_fs, reopen_fs
from .io.iostats import STATS
from .io.manifest_share import read_shared
from .io.remote import RemoteOptions, RemoteSource, RemoteStore, read_fs_options
from .io.source import open_source
from .utils import parse_size

__all__ = ["Dataset"]

MAX_BLOCK_TABLE = 1 << 22  # records (12 bytes each) up to which a remote dataset keeps
# each record's block and offset in it (see Dataset._block_table)
WARM_SHARDS = 256  # shards Dataset._prepare_workers looks at in the cache (file lookups)
OPEN_AHEAD = 64  # a remote dataset of at most this many shards opens them all for workers


class BlockTable:
    """Where each record of a dataset lies, for the shards open in this process:
    ``block_of`` (its block in its shard; -1: not open), ``offset`` (in the block), and for
    the loader's one-call gather (``loader.fill.ResidentGather``) ``gather_of``: a number per
    block of the dataset, -1 where the shard is not open or its records cannot be gathered
    straight (records shorter than their fixed part), and ``entries[g]``: ``(key in
    RemoteStore.maps or None, shard reader, block)`` of block ``g``."""

    def __init__(self, dataset: Dataset) -> None:
        n = len(dataset)
        self.dataset = dataset
        self.block_of = np.full(n, -1, np.int32)
        self.offset = np.zeros(n, np.uint32)
        self.gather_of = np.full(n, -1, np.int32)
        self.base = dataset._block_base()
        self.entries: list = [None] * int(self.base[-1])
        self.shards_added = 0

    def add(self, s: int, reader: ShardReader) -> None:
        self.shards_added += 1
        a, b = self.dataset._starts[s], self.dataset._starts[s + 1]
        blocks = reader.records["block"]
        self.offset[a:b] = reader.records["offset"]
        self.block_of[a:b] = blocks  # last: -1 until the row is whole
        if reader.shortest >= self.dataset._layout.header_size:
            base = int(self.base[s])
            uid = reader.source._uid if self.dataset.remote else None
            self.entries[base : base + len(reader.blocks)] = [
                ((uid, g) if uid is not None else None, reader, g)
                for g in range(len(reader.blocks))
            ]
            self.gather_of[a:b] = blocks + base


class Dataset:
    """A fastload dataset at a local path or fsspec URL.

    ``len(ds)``, ``ds[i]`` (a dict of field values; negative indices count from the end),
    iteration in storage order, and ``ds.get_batch(indices)`` for columnar batches. Every
    record's checksum is checked before it is used unless ``verify=False``.

    Datasets pickle cheaply (open shards are not pickled), so they can be sent to workers.

    Remote datasets (``s3://``, ``gs://``, any fsspec URL that is not a local path) are read
    with ranged GETs of blocks, retried on transient errors, through a block cache on local
    disk: ``cache_dir`` (default ``$FASTLOAD_CACHE_DIR`` or ``~/.cache/fastload``; ``False``
    for none) holding at most ``cache_limit`` bytes (``"50GB"``; default 10 GB), shared safely
    by every process using that directory. ``ds.prefetch(indices)`` starts fetching the blocks
    of records about to be read; ``ds.io_stats()`` counts requests, retries, bytes and cache
    hits. ``remote_options`` (a :class:`fastload.io.remote.RemoteOptions`) tunes the rest.

    Compressed blocks are decompressed whole; each process keeps up to ``block_cache`` bytes
    of them (default 128 MiB; ``"1GB"``, or 0 for none), least recently used dropped first. A
    compressed dataset read at random (a shuffled epoch) is decompressed once per process when
    its decompressed size fits, else about once per record read: see ``shuffle="block"``.
    ``max_block_bytes``: a compressed block declaring a larger decompressed size is refused
    before any memory is allocated for it. By default: 4 x the dataset's block size (its
    writer's ``block_size``), or for a block holding one record, that record's size if
    larger (a record larger than the block size gets a block of its own).

    A local shard that is a symbolic link to a file outside the dataset's directory is refused
    unless ``follow_symlinks=True`` (a dataset from elsewhere must not make fastload open any
    file the user can read).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        storage_options: dict[str, Any] | None = None,
        verify: bool = True,
        cache_dir: str | os.PathLike | bool | None = None,
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
        protocol = fsspec.utils.get_protocol(self.path)
        local = protocol in ("file", "local")
        self._fs_options = storage_options if local else read_fs_options(protocol, storage_options)
        self._fs, self.root = open_fs(self.path, self._fs_options)
        self._parent_fs = None  # a forked child's: what it reopens (see fs)
        self.remote = not is_local(self._fs)
        self._pid = os.getpid()
        options = copy.copy(remote_options) if remote_options is not None else RemoteOptions()
        if cache_dir is not None:
            options.cache_dir = os.fspath(cache_dir) if cache_dir is not False else False
        elif remote_options is None and _protocol(self.fs) == "memory":
            options.cache_dir = False  # nothing to gain from a disk copy of memory
        if cache_limit is not None:
            options.cache_limit = cache_limit
        self.remote_options = options
        self._store: RemoteStore | None = None
        self._child_session = None  # made before forking workers, for them (io.fs)
        if self.remote:
            _check_limit(options)
        self.manifest = _read_manifest(
            self.fs, self.root, self.path, self._store_() if self.remote else None
        )
        self.schema: Schema = self.manifest.schema
        self._layout = RecordLayout(self.schema)
        self._starts = np.cumsum([0] + [s.records for s in self.manifest.shards], dtype=np.int64)
        self._readers: list[ShardReader | None] = [None] * len(self.manifest.shards)
        self._table: BlockTable | None = None  # remote: where each record lies (_block_table)

    # -- shards ---------------------------------------------------------------------------
    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.manifest.shards

    @property
    def fingerprint(self) -> str:
        """Identifies the dataset's content (changes if any shard changes)."""
        return self.manifest.fingerprint

    @property
    def classes(self) -> list[str] | None:
        """The class names, a label's value indexing them (as torchvision's
        ``ImageFolder.classes``): those of the field ``label``, else of the first field that
        has names; None when the dataset names none (``manifest.classes`` has every field's)."""
        named = self.manifest.classes
        if not named:
            return None
        field = "label" if "label" in named else next(f for f in self.schema.names if f in named)
        return list(named[field])

    @property
    def class_to_idx(self) -> dict[str, int] | None:
        """``{class name: label}``, as torchvision's ``ImageFolder.class_to_idx``."""
        classes = self.classes
        return None if classes is None else {name: i for i, name in enumerate(classes)}

    @property
    def features(self) -> dict[str, Any] | None:
        """The source's types of its columns as recorded at convert time (Hugging Face
        features: ``{"label": {"_type": "ClassLabel", "names": [...]}, ...}``), or None."""
        return self.manifest.features

    def shard_reader(self, s: int) -> ShardReader:
        """The reader of shard ``s``, opened (and its index validated) on first use."""
        self._own()
        reader = self._readers[s]
        if reader is None:
            info = self.manifest.shards[s]
            path = join(self.fs, self.root, info.path)
            if self.remote:
                source = self._remote_source(s)
            else:
                root = None if self.follow_symlinks else self.root
                source = open_source(self.fs, path, name=_display(self.fs, path), root=root)
            try:
                try:
                    reader = self._reader(source, info, s)
                except FastloadError:
                    if not (self.remote and source.from_cache):
                        raise
                    source.forget_cached()  # a bad cached header or index: fetch it anew
                    reader = self._reader(source, info, s)
                if self.remote:
                    source.attach(reader.blocks)
            except BaseException:
                source.close()
                raise
            self._readers[s] = reader
            if self._table is not None:
                self._table.add(s, reader)
        return reader

    def _reader(self, source: Any, info: ShardInfo, s: int) -> ShardReader:
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

    def _remote_source(self, s: int) -> RemoteSource:
        info = self.manifest.shards[s]
        path = join(self.fs, self.root, info.path)
        return RemoteSource(self._store_(), path, _display(self.fs, path), info)

    def _block_table(self, local: bool = False) -> BlockTable | None:
        """Remote (or any, with ``local``), up to ``MAX_BLOCK_TABLE`` records: where each
        record lies (see :class:`BlockTable`), kept as shards open and dropped on close and
        fork. Per-batch work (read-ahead hints, the loader's gather of blocks at hand, block
        numbers) then needs no per-shard numpy work."""
        if self._table is None and (self.remote or local) and len(self) <= MAX_BLOCK_TABLE:
            self._table = BlockTable(self)
            for s, reader in enumerate(self._readers):
                if reader is not None:
                    self._table.add(s, reader)
        return self._table

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
        cached blocks mapped and checked; see :meth:`_prepare_workers`) is kept: it is plain
        memory and read-only maps, and opening it again cost each new worker more than a
        short epoch's reading. Read-ahead the parent had in flight is dropped (its threads
        are not here to finish it)."""
        self._pid = os.getpid()
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
                reader.source.adopt(store)

    def _prepare_workers(self) -> int:
        """Remote: what the loader does before it forks its workers, which then start with
        all of it (see :meth:`_forked`) instead of each doing it again, every epoch unless
        workers persist. A dataset of at most ``OPEN_AHEAD`` shards has them all opened (at
        once: one round trip), so that no worker waits for a shard it first meets late in an
        epoch; the shards whose header and index are cached are opened either way, and
        their cached blocks mapped (each checked once, up to ``mapped_blocks``). Returns the
        number of blocks mapped now."""
        if not self.remote:
            return 0
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
                mapped += reader.source.map_cached(b)
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
        idx = _as_indices(indices)
        n = len(self)
        idx = idx[(idx >= -n) & (idx < n)]
        if not len(idx):
            return 0
        idx = np.where(idx < 0, idx + n, idx)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        table = self._block_table()
        if table is not None:
            blocks = table.block_of[idx]
            if int(blocks.min()) >= 0:  # every shard open: the common case, once running
                return self._prefetch_blocks(shard_of.tolist(), blocks.tolist())
        # Each shard's records, shards in order of first use (the one needed first is
        # fetched first).
        by_shard = np.argsort(shard_of, kind="stable")
        runs = np.split(by_shard, np.flatnonzero(np.diff(shard_of[by_shard])) + 1)
        runs.sort(key=lambda run: run[0])
        return self._prefetch_groups(
            [(int(shard_of[run[0]]), idx[run] - self._starts[shard_of[run[0]]]) for run in runs]
        )

    def _all_mapped(self) -> bool:
        """Whether every shard is open here and every block mapped from the cache (maps hold
        this dataset's blocks only: at most one each)."""
        store = self._store
        if store is None or not store.maps:
            return False
        table = self._block_table()
        return (
            table is not None
            and table.shards_added == len(self._readers)
            and len(store.maps) >= int(table.base[-1])
        )

    def _prefetch_blocks(self, shards: list[int], blocks: list[int]) -> int:
        """:meth:`prefetch` of blocks ``(shards[i], blocks[i])`` of open shards, in order."""
        todo: dict[int, dict[int, None]] = {}
        for s, b in dict.fromkeys(zip(shards, blocks)):  # each block once (hints repeat them)
            reader = self._readers[s]
            if reader is None:  # closed meanwhile: it reopens when read
                continue
            if reader.held(b) is None and reader.source.resident(b) is None:
                todo.setdefault(s, {})[b] = None
        return sum(self._readers[s].source.prefetch(list(bs)) for s, bs in todo.items())

    def _prefetch_groups(self, groups: list[tuple[int, np.ndarray]]) -> int:
        """:meth:`prefetch` of ``(shard, records in it)`` pairs, in the order given. It runs
        for every batch (the loader's hint, then the read itself), so the blocks already at
        hand are skipped in plain Python, without a file lookup."""
        self._open_shards([s for s, _ in groups])
        scheduled = 0
        for s, records in groups:
            reader = self.shard_reader(s)
            source = reader.source
            held = reader.held  # blocks the reader holds (decompressed) need no fetch
            resident = source.resident
            todo = [
                b
                for b in dict.fromkeys(reader.records["block"][records].tolist())
                if held(b) is None and resident(b) is None
            ]
            if todo:
                scheduled += source.prefetch(todo)
        return scheduled

    def _open_shards(self, shards: list[int]) -> None:
        """Open the remote shards among ``shards`` not opened yet, several at once. Each
        costs a round trip or two (header; trailer and index), and a shuffled batch touches
        many shards at first: one after another, that alone took seconds. A shard that fails
        to open is left for the read that needs it to raise."""
        todo = [s for s in shards if self._readers[s] is None]
        if len(todo) < 2:
            return
        from concurrent.futures import ThreadPoolExecutor

        self._store_()  # created once, here, not by racing threads

        def try_open(s: int) -> None:
            try:
                self.shard_reader(s)
            except Exception:
                pass

        with ThreadPoolExecutor(
            min(len(todo), self.remote_options.concurrency), thread_name_prefix="fastload-open"
        ) as pool:
            list(pool.map(try_open, todo))

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

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, record within shard)`` of a dataset index (negative counts from the end)."""
        n = len(self)
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}")
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} records")
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        return s, i - int(self._starts[s])

    # -- records --------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        s, r = self.locate(index)
        return self._decode(s, r)

    def _decode(self, s: int, r: int) -> dict[str, Any]:
        reader = self.shard_reader(s)
        try:
            return self._layout.decode(memoryview(reader.record(r)))
        except RecordDecodeError as e:
            raise reader.corrupt_record(r, f"is malformed: {e}") from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for s, info in enumerate(self.manifest.shards):
            for r in range(info.records):
                yield self._decode(s, r)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Records ``indices`` as columns: one numpy array per fixed-size field (gathered in the
        compiled core) and one list per variable-size field, in the order given."""
        return self.read_into(indices)

    def read_into(
        self,
        indices: Sequence[int] | np.ndarray,
        out: Mapping[str, np.ndarray] | None = None,
        *,
        image_views: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Like :meth:`get_batch`, but the fixed-size fields named in ``out`` are gathered
        straight into the arrays given there (shape ``(n, *field shape)``, the field's dtype,
        C-contiguous; a shared-memory batch buffer, say): one copy of their bytes, in C++.
        Returns the other fields, by name.

        ``image_views``: image fields whose values are read-only memoryviews straight into
        the records' checked bytes (the mapped shard, or a block held in memory) instead of a
        bytes copy each, for a caller that decodes them at once: a batch of 256 JPEGs is
        ~30 MB, which each loader worker copied (and held) per batch. The views keep what they
        point into alive."""
        out = dict(out or {})
        spans = self._locate(_as_indices(indices))
        layout = self._layout
        n = len(spans.src)
        for name, array in out.items():
            _check_out(self.schema[name], array, n)
        result: dict[str, Any] = {}
        for name, array in out.items():
            _, offset = layout.header_dtype.fields[name][:2]
            size = array.dtype.itemsize * (array.size // max(n, 1))
            _core.gather(
                spans.buffers,
                spans.src,
                spans.offsets + np.uint64(offset),
                np.full(n, size, np.uint64),
                array.reshape(-1).view(np.uint8),
                np.arange(n, dtype=np.uint64) * np.uint64(size),
            )
        rest = [f for f in layout.fixed_fields if f.name not in out and f.kind != "image"]
        if rest or layout.var_fields:
            headers = np.empty(n, layout.header_dtype)
            _core.gather(
                spans.buffers,
                spans.src,
                spans.offsets,
                np.full(n, layout.header_size, np.uint64),
                headers.view(np.uint8),
                np.arange(n, dtype=np.uint64) * np.uint64(layout.header_size),
            )
            for f in rest:
                result[f.name] = np.ascontiguousarray(headers[f.name])
            if layout.var_fields:
                result.update(self._gather_var(spans, headers, image_views))
        return {name: result[name] for name in self.schema.names if name in result}

    def block_numbers(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The dataset-wide number of the storage block that holds each of records
        ``indices`` (blocks numbered shard after shard, as the manifest lists them), or -1 for
        an index out of range. Opens the shards it needs (their indexes only). Readers of a
        compressed dataset split work by it: a block decompressed by one of them is not
        decompressed again by the others."""
        idx = _as_indices(indices)
        n = len(self)
        out = np.full(len(idx), -1, np.int64)
        ok = (idx >= -n) & (idx < n)
        idx = np.where(idx < 0, idx + n, idx)[ok]
        if not len(idx):
            return out
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        table = self._block_table(local=True)
        if table is not None:
            blocks = table.block_of[idx]
            if int(blocks.min()) >= 0:  # every shard open: the common case, once running
                out[ok] = table.base[shard_of] + blocks
                return out
        base = self._block_base()
        found = np.empty(len(idx), np.int64)
        for s in sorted(set(shard_of.tolist())):
            mine = np.flatnonzero(shard_of == s)
            records = self.shard_reader(s).records["block"]
            found[mine] = base[s] + records[idx[mine] - self._starts[s]]
        out[ok] = found
        return out

    def _block_base(self) -> np.ndarray:
        """The dataset-wide number of each shard's first block (worked out once)."""
        base = self.__dict__.get("_first_blocks")
        if base is None:
            base = self._first_blocks = np.cumsum(
                [0] + [s.blocks for s in self.shards], dtype=np.int64
            )
        return base

    def _locate(self, idx: np.ndarray) -> _Spans:
        """Where records ``idx`` lie (checksums checked), for gathers in the compiled core."""
        n = len(self)
        bad = np.flatnonzero((idx < -n) | (idx >= n))
        if len(bad):
            raise IndexError(f"index {idx[bad[0]]} is out of range for a dataset of {n} records")
        idx = np.where(idx < 0, idx + n, idx)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        local = idx - self._starts[shard_of]
        fetch = self.remote and len(idx) > 1  # the batch's blocks in parallel, coalesced
        if len(self._readers) == 1 or (len(idx) and (shard_of == shard_of[0]).all()):
            if fetch:
                self._prefetch_groups([(int(shard_of[0]), local)])
            bufs, src, offsets, lengths = self.shard_reader(int(shard_of[0])).locate(local)
            return self._spans(list(bufs), src, offsets, lengths, shard_of, local)
        buffers: list = []
        src = np.empty(len(idx), np.uint32)
        offsets = np.empty(len(idx), np.uint64)
        lengths = np.empty(len(idx), np.uint64)
        # sorted(set()), not np.unique: np.unique imports numpy.ma on first use, ~15 ms in
        # every freshly started worker
        groups = [(s, np.flatnonzero(shard_of == s)) for s in sorted(set(shard_of.tolist()))]
        if fetch:
            self._prefetch_groups([(s, local[mine]) for s, mine in groups])
        for s, mine in groups:
            bufs, si, off, ln = self.shard_reader(s).locate(local[mine])
            src[mine] = si + len(buffers)
            offsets[mine], lengths[mine] = off, ln
            buffers.extend(bufs)
        return self._spans(buffers, src, offsets, lengths, shard_of, local)

    def _spans(self, buffers, src, offsets, lengths, shard_of, local) -> _Spans:
        spans = _Spans(self, buffers, src, offsets, lengths, shard_of, local)
        short = np.flatnonzero(lengths < self._layout.header_size)
        if len(short):
            raise spans.corrupt(short[0], f"is {lengths[short[0]]} bytes, shorter than its header")
        return spans

    def _gather_var(
        self, spans: _Spans, headers: np.ndarray, image_views: Iterable[str] = ()
    ) -> dict[str, list]:
        layout = self._layout
        buffers, src, offsets, lengths = spans.buffers, spans.src, spans.offsets, spans.lengths
        corrupt = spans.corrupt
        n, k = len(src), len(layout.var_fields)
        ends = headers["__var_ends__"].reshape(n, k).astype(np.uint64)
        starts = np.concatenate([np.zeros((n, 1), np.uint64), ends[:, :-1]], axis=1)
        room = lengths - np.uint64(layout.header_size)
        bad = np.flatnonzero((ends < starts).any(axis=1) | (ends[:, -1] != room))
        if len(bad):
            raise corrupt(bad[0], "is malformed: its field lengths do not add up to its length")
        sizes = (ends - starts).reshape(-1)
        src_off = (offsets[:, None] + np.uint64(layout.header_size) + starts).reshape(-1)
        # Fields in ``image_views`` are views straight into the record's buffer (a mapped
        # shard, a block held in memory); the others are copied into one buffer, ``data``.
        as_views = set(image_views)
        in_place = np.tile([f.name in as_views for f in layout.var_fields], n)
        copied = np.where(in_place, np.uint64(0), sizes)
        dst = np.zeros(len(sizes), np.uint64)  # where each copied value starts in ``data``
        np.cumsum(copied[:-1], dtype=np.uint64, out=dst[1:])
        data = np.empty(int(copied.sum()), np.uint8)
        _core.gather(buffers, np.repeat(src, k), src_off, copied, data, dst)
        views = (
            [memoryview(data)] + [_byte_view(b) for b in buffers]
            if as_views
            else [memoryview(data)]
        )
        columns: dict[str, list] = {}
        for j, f in enumerate(layout.var_fields):
            col, no_copy = [], f.name in as_views
            for i in range(n):
                v = i * k + j
                view, a = (
                    (views[1 + int(src[i])], int(src_off[v]))
                    if no_copy
                    else (views[0], int(dst[v]))
                )
                try:
                    col.append(
                        layout.var_value(
                            f, view[a : a + int(sizes[v])], headers[i], image_views=no_copy
                        )
                    )
                except RecordDecodeError as e:
                    raise corrupt(i, f"is malformed: {e}") from None
            columns[f.name] = col
        return columns

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap every open shard (the dataset reopens them if used again)."""
        for i, reader in enumerate(self._readers):
            if reader is not None:
                reader.close()
                reader.source.close()
                self._readers[i] = None
        self._table = None
        self._decoded.clear()
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = [None] * len(self._readers)
        state["_table"] = None
        state["_store"] = None  # threads and open connections stay in this process
        state["_child_session"] = None
        state["_fs"] = self._fs if self._fs is not None else self._parent_fs
        state["_parent_fs"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"Dataset({self.path!r}, records={len(self)}, shards={len(self.shards)}, "
            f"schema={self.schema.to_dict()})"
        )


@dataclass
class _Spans:
    """Records located in their buffers: record i is ``buffers[src[i]][offsets[i]:+lengths[i]]``."""

    dataset: Dataset
    buffers: list
    src: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    shard: np.ndarray
    local: np.ndarray

    def corrupt(self, i: int, why: str):
        """The error for the i-th located record, naming its shard and record."""
        reader = self.dataset.shard_reader(int(self.shard[i]))
        return reader.corrupt_record(int(self.local[i]), why)


def _check_out(field, array: np.ndarray, n: int) -> None:
    if field.kind not in ("scalar", "ndarray") or not field.is_fixed:
        raise ValueError(f"field {field.name!r} is not fixed-size; it cannot be read into an array")
    want = (n, *(field.shape or ()))
    if (
        not isinstance(array, np.ndarray)
        or array.shape != want
        or array.dtype != field.np_dtype
        or not array.flags.c_contiguous
        or not array.flags.writeable
    ):
        raise ValueError(
            f"out[{field.name!r}] must be a writable C-contiguous {field.np_dtype} "
            f"array of shape {want}"
        )


def _as_indices(indices) -> np.ndarray:
    """``indices`` as a flat int64 array; floats, bools and other non-integers are a TypeError
    (a silent truncation would return the wrong records)."""
    arr = np.asarray(indices).reshape(-1)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind == "O" and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in arr
    ):  # Python ints beyond 64 bits
        return np.array([max(min(int(i), 1 << 62), -(1 << 62)) for i in arr], np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"dataset indices must be integers, got an array of {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        return np.minimum(arr, 1 << 62).astype(np.int64)  # still out of range, but not wrapped
    return arr.astype(np.int64, copy=False)


def _display(fs, path: str) -> str:
    return path if fs.protocol in ("file", ("file", "local")) else fs.unstrip_protocol(path)


def _protocol(fs) -> str:
    p = fs.protocol
    return p[0] if isinstance(p, (tuple, list)) else p


def _check_limit(options: RemoteOptions) -> None:
    parse_size(options.cache_limit)  # a bad size fails here, not in a worker


def _byte_view(buffer) -> memoryview:
    view = memoryview(buffer)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def _fs_of(dataset: Dataset):
    return dataset.fs


def _read_manifest(fs, root: str, shown: str, store: RemoteStore | None = None) -> Manifest:
    path = join(fs, root, MANIFEST_NAME)
    read = functools.partial(_manifest_bytes, fs, root, shown, path, store)
    options = store.options if store is not None else None
    if options is not None and options.share_manifest and store.cache is not None:
        data = read_shared(
            read, _display(fs, path), store.cache.dir, wait_s=options.manifest_wait_s
        )
    else:
        data = read()
    return Manifest.from_bytes(data, _display(fs, path))


def _manifest_bytes(fs, root: str, shown: str, path: str, store: RemoteStore | None) -> bytes:
    try:
        return store.cat(path, _display(fs, path)) if store is not None else fs.cat_file(path)
    except FileNotFoundError:
        if not fs.exists(root):
            raise IncompleteDatasetError(
                f"{shown}: no such dataset (the path does not exist)"
            ) from None
        raise IncompleteDatasetError(
            f"{_display(fs, path)}: missing; {shown} is not a complete fastload dataset (a "
            "convert that was interrupted leaves no manifest: run it again)"
        ) from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a directory, not a manifest") from None
