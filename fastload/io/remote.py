"""Reading shards from object stores: ranged GETs with retries and resumption, a block cache on
local disk, and read-ahead driven by the indices the loader will read next.

One :class:`RemoteStore` per dataset and process holds the filesystem, the retry policy, the
cache and a small thread pool; a :class:`RemoteSource` per shard is the shard reader's byte
source. The shard's blocks are the unit of caching and of verification (their XXH64 from the
shard's index); neighbouring blocks are fetched with one ranged GET (up to ``max_request``
bytes) and split. Nothing here waits for a whole shard: opening one costs two small ranged GETs
(the header, and the tail holding the index), and a record costs its block.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import fsspec
import numpy as np

from ..format.checksum import hash64
from ..format.manifest import ShardInfo
from .cache import DEFAULT_CACHE_LIMIT, BlockCache, default_cache_dir
from .iostats import STATS
from .retry import RetryPolicy, ShortRead, call_with_retries

__all__ = ["RemoteOptions", "RemoteStore", "RemoteSource", "read_fs_options"]

_UIDS = itertools.count()
HEADER_BYTES = 32  # a shard's header, read first at open
STREAM_CHUNK = 256 * 1024
DENSE = 4  # read-ahead fills gaps once a process asked for 1/DENSE of a shard's blocks


@dataclass
class RemoteOptions:
    """How remote shards are read (``Dataset(..., cache_dir=, cache_limit=, ...)``)."""

    cache_dir: str | None = None  # None: the default directory; False: no disk cache
    cache_limit: int | str = DEFAULT_CACHE_LIMIT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 8  # ranged GETs in flight per process
    max_request: int = 8 << 20  # neighbouring blocks are coalesced up to this many bytes
    memory_limit: int = 128 << 20  # bytes of read-ahead held in memory per process
    readahead_blocks: int = 4  # when a shard is read in order, blocks fetched ahead
    mapped_blocks: int = 1024  # cached blocks kept mapped per process (verified once)
    tail_bytes: int = 256 << 10  # the end of a shard fetched at open: trailer, index (and
    # the last blocks; all of a small shard)
    share_manifest: bool = False  # the local ranks of a launch read the manifest once: local
    # rank 0 fetches it, the others take its copy in the cache directory (manifest_share.py)
    manifest_wait_s: float = 300.0  # how long they wait for that copy


def read_fs_options(protocol: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options for fastload's reads: retries are fastload's (counted, resumable,
    bounded), so s3fs/botocore make one attempt each unless the user configured theirs."""
    opts = copy.deepcopy(dict(storage_options or {}))
    if protocol in ("s3", "s3a"):
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("retries", {"total_max_attempts": 1})
        config.setdefault("connect_timeout", 10)
        config.setdefault("read_timeout", 30)
        opts["config_kwargs"] = config
    return opts


def _protocol(fs) -> str:
    p = fs.protocol
    return p[0] if isinstance(p, (tuple, list)) else p


class RemoteStore:
    """Ranged reads of one dataset's objects, with retries, the cache and a fetch pool."""

    def __init__(self, fs, options: RemoteOptions, *, parent: RemoteStore | None = None) -> None:
        """``fs``: the filesystem, or a function that makes it when the first request needs
        it (a forked worker reading only cached blocks never does: making one costs ~6 ms
        and a thread, each worker, each epoch). ``parent``: in a forked child, the parent's
        store, whose cache (paths and a limit; its locks are taken per call) and mapped,
        checked blocks (read-only maps of files) this one keeps."""
        self._fs = None
        self._open_fs: Callable[[], Any] | None = None
        if isinstance(fs, fsspec.AbstractFileSystem):
            self._use(fs)
        else:
            self._open_fs = fs
        self.options = options
        self.policy = options.retry
        cache_dir = options.cache_dir
        self.cache: BlockCache | None = parent.cache if parent is not None else None
        if cache_dir is not False and parent is None:
            try:
                self.cache = BlockCache(cache_dir or default_cache_dir(), options.cache_limit)
            except OSError as e:
                if cache_dir:
                    raise  # the directory asked for is unusable: say so
                warnings.warn(
                    f"fastload: no block cache (the default cache directory is not "
                    f"usable: {e}); pass cache_dir= or set FASTLOAD_CACHE_DIR",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Cached blocks already mapped and checked: (source id, block) -> memoryview.
        self.maps: OrderedDict[tuple[int, int], memoryview] = (
            OrderedDict(parent.maps) if parent is not None else OrderedDict()
        )
        #: Counts the views dropped from ``maps``: a holder of views taken from it (the
        #: loader's one-call gather) lets go of them when it changes.
        self.maps_dropped = 0
        self.pending_bytes = 0
        self.filling = 0  # background GETs of shards read densely (RemoteSource._fill_more)

    @property
    def fs(self):
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    self._use(self._open_fs())
        return self._fs

    def _use(self, fs) -> None:
        self._s3 = _protocol(fs) in ("s3", "s3a") and hasattr(fs, "_call_s3")
        if _protocol(fs) in ("s3", "s3a") and "retries" not in getattr(fs, "storage_options", {}):
            fs.retries = 1  # s3fs's own loop; ours counts, resumes and is bounded
        self._fs = fs

    def add_pending(self, n: int) -> None:
        """Bytes of read-ahead held in memory, over every shard of this store."""
        with self._lock:
            self.pending_bytes += n

    def start_fill(self) -> bool:
        """Reserve one of the few GETs that fetch the rest of densely read shards (at most
        half of ``concurrency``: reads asked for never wait behind many of them)."""
        with self._lock:
            if self.filling >= max(1, self.options.concurrency // 2):
                return False
            self.filling += 1
            return True

    def end_fill(self) -> None:
        with self._lock:
            self.filling -= 1

    def mapped(self, key: tuple[int, int]) -> memoryview | None:
        with self._lock:
            view = self.maps.get(key)
            if view is not None:
                self.maps.move_to_end(key)
            return view

    def keep_mapped(self, key: tuple[int, int], view: memoryview) -> None:
        with self._lock:
            self.maps[key] = view
            while len(self.maps) > self.options.mapped_blocks:
                self.maps.popitem(last=False)  # the map closes when its last view goes
                self.maps_dropped += 1

    @property
    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.options.concurrency, thread_name_prefix="fastload-fetch"
                )
                # At exit, drop queued read-ahead rather than fetch it (the pool's threads are
                # joined at exit; this runs before that join).
                register = getattr(threading, "_register_atexit", None)
                if register is not None:
                    ref = weakref.ref(self._pool)
                    with contextlib.suppress(RuntimeError):  # already shutting down
                        register(lambda: ref() and ref().shutdown(wait=False, cancel_futures=True))
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self.maps.clear()
            self.maps_dropped += 1

    # -- requests -------------------------------------------------------------------------
    def _on_retry(self, e: BaseException) -> None:
        STATS.add("retries")

    def cat(self, path: str, url: str) -> bytes:
        """A whole (small) object, such as the manifest."""

        def attempt(_):
            STATS.add("requests")
            return self.fs.cat_file(path)

        data = call_with_retries(attempt, url, self.policy, self._on_retry)
        STATS.add("bytes_fetched", len(data))
        return data

    def get_range(self, path: str, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object. Transient errors are retried; a body cut short
        is resumed from its last byte received."""
        buf = bytearray()
        want = end - start

        def attempt(_):
            pos = start + len(buf)
            STATS.add("requests")
            before = len(buf)
            try:
                fs = self.fs
                if self._s3:
                    self._s3_stream(path, pos, end, buf)
                else:
                    data = fs.cat_file(path, start=pos, end=end)
                    if len(data) > end - pos:
                        raise OSError(
                            f"asked for {end - pos} bytes at {pos}, got {len(data)}: "
                            "the server ignored the range"
                        )
                    buf.extend(data)
            except Exception as e:
                if "checksum" in type(e).__name__.lower():
                    del buf[before:]  # the body did not match its checksum: keep none of it
                raise
            finally:
                STATS.add("bytes_fetched", len(buf) - before)
            if len(buf) < want:
                raise ShortRead(f"body ended after {len(buf)} of {want} bytes")

        try:
            call_with_retries(attempt, f"{url} (bytes {start}..{end})", self.policy, self._on_retry)
        except BaseException:
            STATS.add("errors")
            raise
        return bytes(buf)

    def _s3_stream(self, path: str, start: int, end: int, sink: bytearray) -> None:
        """One ranged GetObject, its body appended to ``sink`` as it arrives (so what came
        before a failure is kept and the next attempt asks only for the rest)."""
        from fsspec.asyn import sync

        fs = self.fs
        bucket, key, version = fs.split_path(path)
        extra = {"VersionId": version} if version else {}

        async def fetch():
            resp = await fs._call_s3(
                "get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **extra
            )
            body = resp["Body"]
            try:
                got = resp.get("ContentRange")
                if got and not str(got).startswith(f"bytes {start}-"):
                    raise OSError(f"asked for bytes {start}-{end - 1}, got {got}")
                limit = end - start
                taken = 0
                while taken < limit:
                    chunk = await body.read(min(STREAM_CHUNK, limit - taken))
                    if not chunk:
                        break
                    sink.extend(chunk)
                    taken += len(chunk)
            finally:
                body.close()

        sync(fs.loop, fetch)


class RemoteSource:
    """The byte source of one remote shard (see ``ByteSource`` in format/shard_reader.py)."""

    buffer = None
    whole_blocks = True  # the shard reader reads whole blocks (the unit of the cache)

    def __init__(self, store: RemoteStore, path: str, url: str, info: ShardInfo) -> None:
        self.store, self.path, self.name = store, path, url
        self.size = int(info.bytes)
        self.hash = info.hash
        self._tail_start = max(0, self.size - store.options.tail_bytes)
        self._regions: dict[int, bytes | memoryview] = {}  # header, tail: start -> bytes
        self._fresh: list[int] = []  # regions fetched (not from the cache)
        self.from_cache = False
        self._blocks: np.ndarray | None = None
        self._block_at: dict[int, int] = {}
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, Future] = OrderedDict()  # block -> its bytes
        self._pending_bytes = 0  # this shard's part of store.pending_bytes
        self._last = -2
        self._wanted: set[int] = set()  # blocks this process was asked to read ahead
        self._fill_at = 0  # dense reading: blocks before this one were fetched or queued
        self._closed = False
        self._unchecked: set[int] = set()  # blocks handed out that failed their checksum
        self._uid = next(_UIDS)

    def __getstate__(self):
        raise TypeError("a RemoteSource is not picklable; pickle the Dataset instead")

    def adopt(self, store: RemoteStore) -> None:
        """In a forked child: read through ``store`` (this process's); the parent's locks
        may have been held at the fork and its read-ahead will never finish here."""
        self.store = store
        self._lock = threading.Lock()
        self._pending = OrderedDict()
        self._pending_bytes = 0
        self._fill_at = 0
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
        key = (self._uid, b)
        cache = self.store.cache
        if cache is None or key in self.store.maps:
            return False
        offset, length, checksum = self._entry(b)
        data = cache.get(self.name, self.hash, self.size, offset, length, checksum, consume=False)
        if data is None:
            return False
        self.store.keep_mapped(key, data)
        return True

    # -- the ByteSource protocol ------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        from ..errors import ShardFormatError

        if offset < 0 or length < 0 or offset + length > self.size:
            raise ShardFormatError(
                f"{self.name}: read of {length} bytes at offset {offset} is "
                f"past the end of the {self.size}-byte file"
            )
        b = self._block_at.get(offset)
        if b is not None and int(self._blocks["stored_size"][b]) == length:
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
            self._fresh.append(start)
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

    def attach(self, blocks: np.ndarray) -> None:
        """Learn the block table (validated by the shard reader); the tail is no longer
        needed."""
        self._blocks = blocks
        self._block_at = {int(o): i for i, o in enumerate(blocks["offset"])}
        cache = self.store.cache
        if cache is not None:  # validated now: worth keeping for the next process
            for start in self._fresh:
                data = self._regions[start]
                cache.put(self.name, self.hash, self.size, start, bytes(data))
                self._cache_blocks_in(start, data)
        self._regions.clear()
        self._fresh.clear()

    def _cache_blocks_in(self, start: int, data: bytes | memoryview) -> None:
        """Cache the blocks lying wholly inside fetched bytes ``data`` (at ``start``): the
        tail fetched at open holds the last blocks, and all of a small shard's."""
        offsets, sizes = self._blocks["offset"], self._blocks["stored_size"]
        inside = np.flatnonzero((offsets >= start) & (offsets + sizes <= start + len(data)))
        view = memoryview(data)
        for b in inside.tolist():
            offset, length, checksum = self._entry(b)
            piece = bytes(view[offset - start : offset - start + length])
            if hash64(piece) == checksum:
                self.store.cache.put(self.name, self.hash, self.size, offset, piece, ahead=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for fut in self._pending.values():
                fut.cancel()
            self._pending.clear()
            self.store.add_pending(-self._pending_bytes)
            self._pending_bytes = 0

    # -- blocks ---------------------------------------------------------------------------
    def _entry(self, b: int) -> tuple[int, int, int]:
        e = self._blocks[b]
        return int(e["offset"]), int(e["stored_size"]), int(e["checksum"])

    def checked(self, b: int) -> bool:
        """Whether the bytes last returned for block ``b`` matched its checksum (the shard
        reader then need not hash them again)."""
        return b not in self._unchecked

    def resident(self, b: int) -> memoryview | None:
        """The stored bytes of block ``b`` if they are at hand already (a cached copy mapped
        and checked), else None; no I/O, no lock: the per-batch fast path of the shard
        reader."""
        return self.store.maps.get((self._uid, b))

    def block(self, b: int) -> bytes | memoryview:
        """The stored bytes of block ``b``: from read-ahead, the cache, or a ranged GET."""
        key = (self._uid, b)
        view = self.store.mapped(key)
        if view is not None:
            return view
        sequential = b == self._last + 1
        self._last = b
        with self._lock:
            fut = self._pending.pop(b, None)
            if fut is not None:
                self._add_pending(-self._entry(b)[1])
        if sequential and self.store.options.readahead_blocks:
            n = len(self._blocks)
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
        offset, length, checksum = self._entry(b)
        cache = self.store.cache
        if cache is not None:
            data = cache.get(self.name, self.hash, self.size, offset, length, checksum)
            if data is not None:
                STATS.add("cache_hits")
                self.store.keep_mapped(key, data)
                return data
            STATS.add("cache_misses")
        start = time.perf_counter()
        data = self._fetch_run([b], ahead=False)[b]
        STATS.add("wait_seconds", time.perf_counter() - start)
        return data

    def _consumed(self, b: int) -> None:
        cache = self.store.cache
        if cache is not None:
            offset, length, _ = self._entry(b)
            cache.touch(self.name, self.hash, self.size, offset, length)

    def prefetch(self, blocks: Iterable[int]) -> int:
        """Start fetching ``blocks`` (in the order given) in the background, neighbours in
        one request; blocks already cached, in flight, or over the memory budget are skipped.
        Returns how many blocks were scheduled."""
        if self._blocks is None:
            return 0
        opts = self.store.options
        maps, uid = self.store.maps, self._uid
        todo: list[int] = []
        with self._lock:
            budget = opts.memory_limit - self.store.pending_bytes
            for b in blocks:
                b = int(b)
                if b in self._pending or b in todo or (uid, b) in maps:
                    continue  # in flight, or cached and mapped already (no file lookup)
                self._wanted.add(b)
                if self._fetched(b):
                    continue
                length = self._entry(b)[1]
                if length > budget:
                    self._trim()
                    budget = opts.memory_limit - self.store.pending_bytes
                    if length > budget:
                        break
                budget -= length
                todo.append(b)
            if not todo:
                return 0
            todo.sort()
            dense = self._dense()
            if dense:
                todo = self._fill_gaps(todo, budget)
            runs = _runs(todo, self._blocks, opts.max_request)
            for run in runs:
                futures = {b: Future() for b in run}
                for b, f in futures.items():
                    self._pending[b] = f
                    self._add_pending(self._entry(b)[1])
                self.store.pool.submit(self._run_task, run, futures)
        STATS.add("prefetched_blocks", len(todo))
        if dense:
            self._fill_more()
        return len(todo)

    def _dense(self) -> bool:
        """Whether this process reads the shard densely: it asked for 1/DENSE of its blocks
        (a shuffled epoch soon asks for all of them), and a few shards fit in the cache."""
        cache = self.store.cache
        return (
            cache is not None
            and DENSE * len(self._wanted) >= len(self._blocks)
            and DENSE * self.size <= cache.limit
        )

    def _fill_more(self) -> None:
        """Dense reading: fetch the rest of the shard into the cache in the background, in
        order, in GETs of up to ``max_request``, a few at a time (``RemoteStore.start_fill``);
        each finished GET queues the next. Blocks wanted later are then read from the cache
        instead of costing a round trip each, just when they are needed."""
        maps, uid = self.store.maps, self._uid
        limit = self.store.options.max_request
        n = len(self._blocks)
        runs: list[list[int]] = []
        with self._lock:
            while self._fill_at < n and not self._closed and self.store.start_fill():
                run: list[int] = []
                size = 0
                while self._fill_at < n:
                    b = self._fill_at
                    length = self._entry(b)[1]
                    if run and size + length > limit:
                        break
                    self._fill_at += 1
                    if b in self._pending or (uid, b) in maps or self._fetched(b):
                        if run:
                            break
                        continue
                    run.append(b)
                    size += length
                if not run:
                    self.store.end_fill()
                    break
                runs.append(run)
        for run in runs:
            self.store.pool.submit(self._fill_task, run)

    def _fill_task(self, run: list[int]) -> None:
        try:
            if not self._closed:
                self._fetch_run(run, ahead=True)
        except Exception:
            pass  # read-ahead only: the read that needs these blocks retries, or raises
        finally:
            self.store.end_fill()
        if not self._closed:
            self._fill_more()

    def _fetched(self, b: int) -> bool:
        """Whether block ``b`` is in the cache already (a file lookup)."""
        cache = self.store.cache
        if cache is None:
            return False
        offset, length, _ = self._entry(b)
        return cache.has(self.name, self.hash, self.size, offset, length)

    def _fill_gaps(self, todo: list[int], budget: int) -> list[int]:
        """``todo`` (sorted) with the blocks between two of its neighbours added, where the
        gap is short and its blocks are not fetched or in flight (lock held). Used once this
        process has asked for a large part of the shard (a shuffled epoch reads nearly every
        block of it): its blocks then come in a few GETs of up to ``max_request`` bytes
        rather than one GET per block, which is what a server serves fastest (moto: 2.5x
        the bytes/s of 1 MiB GETs), and the gaps are read soon anyway. Gap blocks go to the
        cache like any read-ahead."""
        sizes = self._blocks["stored_size"]
        limit = self.store.options.max_request // 2
        out = [todo[0]]
        for b in todo[1:]:
            gap = range(out[-1] + 1, b)
            if gap:
                nbytes = int(sizes[gap.start : gap.stop].sum())
                if nbytes <= min(limit, budget) and not any(
                    g in self._pending or self._fetched(g) for g in gap
                ):
                    out.extend(gap)
                    budget -= nbytes
            out.append(b)
        return out

    def _add_pending(self, n: int) -> None:
        self._pending_bytes += n
        self.store.add_pending(n)

    def _trim(self) -> None:
        """Drop finished read-ahead nobody asked for yet, oldest first (lock held)."""
        for b in list(self._pending):
            if self.store.pending_bytes <= self.store.options.memory_limit // 2:
                break
            fut = self._pending[b]
            if fut.done():
                del self._pending[b]
                self._add_pending(-self._entry(b)[1])

    def _run_task(self, run: list[int], futures: dict[int, Future]) -> None:
        if not any(f.set_running_or_notify_cancel() for f in futures.values()):
            return
        try:
            got = self._fetch_run(run, ahead=True)
        except BaseException as e:
            for f in futures.values():
                if not f.done():
                    f.set_exception(e)
            return
        for b, f in futures.items():
            if not f.done():
                f.set_result(got[b])

    def _fetch_run(self, run: list[int], ahead: bool) -> dict[int, bytes | memoryview]:
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
                claim = cache.claim(*args, self._entry(b)[0])
                if claim is not None:
                    claims[b] = claim
            todo = []
            for b in run:
                if b not in claims:
                    continue
                offset, length, checksum = self._entry(b)
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
            offset, length, checksum = self._entry(b)
            claim = cache.wait_claim(*args, offset)
            try:
                got = cache.get(*args, offset, length, checksum, consume=not ahead)
                out[b] = got if got is not None else self._download([b], ahead)[b]
            finally:
                cache.release(claim)
        return out

    def _download(self, run: list[int], ahead: bool) -> dict[int, bytes]:
        """Fetch consecutive blocks with one ranged GET; check each block's checksum (a block
        that fails is fetched once more on its own, then handed over unchecked, for the shard
        reader to report); store the good ones in the cache."""
        first, _, _ = self._entry(run[0])
        last_off, last_len, _ = self._entry(run[-1])
        data = self.store.get_range(self.path, self.name, first, last_off + last_len)
        view = memoryview(data)
        out: dict[int, bytes] = {}
        cache = self.store.cache
        for b in run:
            offset, length, checksum = self._entry(b)
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


def _runs(blocks: list[int], table: np.ndarray, max_request: int) -> list[list[int]]:
    """Split sorted block numbers into runs of neighbours of at most ``max_request`` bytes."""
    runs: list[list[int]] = []
    size = 0
    for b in blocks:
        length = int(table["stored_size"][b])
        if runs and runs[-1][-1] == b - 1 and size + length <= max_request:
            runs[-1].append(b)
            size += length
        else:
            runs.append([b])
            size = length
    return runs
