"""One dataset's ranged reads in one process: the filesystem, retries, the block cache, the
pool of fetch threads, and the cached blocks kept mapped."""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import fsspec

from ..cache import BlockCache, default_cache_dir
from ..iostats import STATS
from ..retry import ShortRead, call_with_retries
from .options import RemoteOptions

__all__ = ["RemoteStore"]

STREAM_CHUNK = 256 * 1024


def _protocol(fs) -> str:
    p = fs.protocol
    return p[0] if isinstance(p, (tuple, list)) else p


def _drop_queued(pool: ThreadPoolExecutor | None) -> None:
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


class RemoteStore:
    """Ranged reads of one dataset's objects, with retries, the cache and a fetch pool."""

    def __init__(self, fs, options: RemoteOptions, *, parent: RemoteStore | None = None) -> None:
        """``fs``: the filesystem, or a function that makes it when the first request needs
        it (a forked worker reading only cached blocks never does: making one costs ~6 ms
        and a thread, each worker, each epoch). ``parent``: in a forked child, the parent's
        store, whose cache (paths and a limit; its locks are taken per call) and mapped,
        checked blocks (read-only maps of files) this one keeps."""
        # An fsspec filesystem, used duck-typed (s3fs's own calls where it is one).
        self._fs: Any = None
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
        #: Counts the views dropped from ``maps`` (part of the dataset's ``version``: a holder
        #: of views taken from them lets go of them when it changes).
        self.maps_dropped = 0
        self.pending_bytes = 0
        self.filling = 0  # background GETs of shards read densely (ReadAhead's dense fill)

    @property
    def fs(self) -> Any:
        if self._fs is None:
            with self._lock:
                if self._fs is None and self._open_fs is not None:
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
                        register(lambda: _drop_queued(ref()))
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
