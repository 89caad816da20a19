"""The local block cache: copies of remote blocks on local disk, bounded in bytes, shared safely
by every process, rank and job on the machine that points at the same directory.

Layout (everything fastload owns lives under ``<cache_dir>/fastload-cache-v1/``)::

    lock                     an flock: reservations, inserts and eviction hold it
    usage                    bytes of cache files plus reservations (kept under the lock)
    shards/<key>/meta.json   which object this is a copy of (url, manifest hash, size)
    shards/<key>/<offset>-<length>.blk   one block, exactly the object's bytes in that range
    tmp/<pid>-<random>.part  a block being written; renamed into shards/ only when complete
    locks/<key>-<offset>.lock  held (flock) by the one process fetching that block
    manifests/<key>-<launch>.json  a launch's shared copy of a manifest (manifest_share.py:
                             a few per running job, outside the byte limit; removed once the
                             launch is over)

- Names under ``shards/`` are hashes of the object's URL and content hash, never the URL's own
  path segments, so no URL (``..``, absolute paths) can put a file outside the cache.
- A block is downloaded into memory, checked against its checksum, written to ``tmp/`` and
  renamed into place: a crash leaves at most a ``.part`` file, never a partial block under a
  used name. Reads check the checksum again; a bad copy is deleted and fetched anew.
- Room is made (evicting first when needed) and the block written and renamed while the lock
  is held, so the files never exceed the limit, whatever the number of writers; ``usage`` is
  recounted from the directory whenever eviction runs, which also repairs the count after a
  crash.
- Order of eviction: blocks already consumed, least recently used first. A block fetched ahead
  of use gets a modification time in the future ("not consumed yet"), reset to now when it is
  read, so read-ahead is evicted only when nothing consumed is left.
- Eviction and ``clear`` delete only ``*.blk``, ``*.part``, ``*.lock`` and ``meta.json`` files
  in this layout; nothing else is ever removed.
- Locks are ``fcntl.flock`` on an open file: the kernel releases them when a process dies, and
  nothing named survives a crash. A flock belongs to the open file, which a forked child
  shares: a worker forked while another thread held the lock would hold it forever (that
  thread does not exist in the child to close it), so a forked child closes its copies of
  every lock file open at the fork.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from ..format.checksum import hash64
from ..utils import parse_size
from .iostats import STATS
from .mapping import map_readonly

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore

__all__ = ["BlockCache", "default_cache_dir", "DEFAULT_CACHE_LIMIT", "CacheEntry"]

LAYOUT = "fastload-cache-v1"
DEFAULT_CACHE_LIMIT = "10GB"
AHEAD_SECONDS = 10 * 365 * 86400  # mtime offset of blocks fetched ahead of use
STALE_PART_SECONDS = 3600
_BLOCK_RE = re.compile(r"^(\d+)-(\d+)\.blk$")

# Lock files open in this process. Opening and closing them is atomic with respect to fork
# (the fork waits for _held_guard), so a child never holds a copy it does not know about.
_held: set[int] = set()
_held_guard = threading.Lock()


def _open_lock(path: str, flags: int) -> int:
    with _held_guard:
        fd = os.open(path, flags, 0o644)
        _held.add(fd)
    return fd


def _close_lock(fd: int) -> None:
    """Closes a lock file (which releases its flock once no other copy is open)."""
    with _held_guard:
        _held.discard(fd)
        os.close(fd)


def _after_fork_in_child() -> None:
    global _held_guard
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()
    _held_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=lambda: _held_guard.acquire(),
        after_in_parent=lambda: _held_guard.release(),
        after_in_child=_after_fork_in_child,
    )


def default_cache_dir() -> str:
    """``$FASTLOAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastload``, else ``~/.cache/fastload``."""
    env = os.environ.get("FASTLOAD_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastload")


@dataclass
class CacheEntry:
    key: str
    url: str
    hash: str
    blocks: int
    bytes: int


class BlockCache:
    """A directory of verified block copies with a byte limit (see the module docstring)."""

    def __init__(
        self, cache_dir: str | os.PathLike, limit: int | str = DEFAULT_CACHE_LIMIT
    ) -> None:
        self.dir = os.path.abspath(os.fspath(cache_dir))
        self.root = os.path.join(self.dir, LAYOUT)
        self.limit = parse_size(limit)
        if self.limit <= 0:
            raise ValueError(f"cache_limit must be positive, got {limit!r}")
        self._shards = os.path.join(self.root, "shards")
        self._tmp = os.path.join(self.root, "tmp")
        self._locks = os.path.join(self.root, "locks")
        os.makedirs(self._locks, exist_ok=True)
        os.makedirs(self._shards, exist_ok=True)
        os.makedirs(self._tmp, exist_ok=True)
        self._lock_path = os.path.join(self.root, "lock")
        self._usage_path = os.path.join(self.root, "usage")
        self._known_dirs: set[str] = set()
        self._clean_tmp()  # what crashed writers left

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_known_dirs"] = set()
        return state

    # -- locking and accounting -----------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = _open_lock(self._lock_path, os.O_RDWR | os.O_CREAT)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            _close_lock(fd)

    def _read_usage(self) -> int | None:
        try:
            fd = os.open(self._usage_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return int(os.pread(fd, 64, 0).strip() or b"x")
        except ValueError:
            return None
        finally:
            os.close(fd)

    def _write_usage(self, value: int) -> None:
        """Written in place, always 20 digits, under the lock (a new file and a rename per
        block cost ~0.2 ms of each ~1 ms insert). A count a crash left wrong is repaired by
        the next eviction scan, which recounts the files (see _make_room)."""
        fd = os.open(self._usage_path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, f"{max(0, value):020d}".encode(), 0)
        finally:
            os.close(fd)

    def _scan(self) -> tuple[int, list[tuple[float, int, str]]]:
        """(bytes of block files, [(mtime, size, path)] of every block file)."""
        files = []
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for d in os.scandir(self._shards):
                if not d.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    for f in os.scandir(d.path):
                        if _BLOCK_RE.match(f.name) and f.is_file(follow_symlinks=False):
                            st = f.stat(follow_symlinks=False)
                            files.append((st.st_mtime, st.st_size, f.path))
                            total += st.st_size
        self._clean_tmp()
        return total, files

    def _clean_tmp(self) -> None:
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for f in os.scandir(self._tmp):
                if not f.name.endswith(".part") or not f.is_file(follow_symlinks=False):
                    continue
                pid = f.name.split("-", 1)[0]
                alive = pid.isdigit() and _pid_alive(int(pid))
                with contextlib.suppress(FileNotFoundError):
                    if not alive or now - f.stat().st_mtime > STALE_PART_SECONDS:
                        os.remove(f.path)

    def _evict_to(self, target: int) -> int:
        """Delete least recently used blocks until their bytes are ≤ ``target``; returns the
        bytes left. Call with the lock held."""
        total, files = self._scan()
        files.sort()
        freed = 0
        for _, size, path in files:
            if total <= target:
                break
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                total -= size
                freed += size
        if freed:
            STATS.add("cache_evicted_bytes", freed)
        return total

    def _make_room(self, nbytes: int) -> int | None:
        """Usage after adding ``nbytes``, evicting first if needed; None if it cannot fit.
        Call with the lock held."""
        if nbytes > self.limit:
            return None
        usage = self._read_usage()
        if usage is None or usage + nbytes > self.limit:
            # Evict down to 90% so that scans stay rare; the recount also repairs drift.
            usage = self._evict_to(min(self.limit - nbytes, int(self.limit * 0.9)))
            if usage + nbytes > self.limit:
                self._write_usage(usage)
                return None
        return usage + nbytes

    # -- blocks ---------------------------------------------------------------------------
    def _dir(self, url: str, content_hash: str, size: int) -> str:
        key = hashlib.sha256(f"{url}\n{content_hash}\n{size}".encode()).hexdigest()[:32]
        d = os.path.join(self._shards, key)
        if d not in self._known_dirs:
            if not os.path.exists(os.path.join(d, "meta.json")):
                os.makedirs(d, exist_ok=True)
                tmp = os.path.join(d, f"meta.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
                with open(tmp, "w") as f:
                    json.dump({"url": url, "hash": content_hash, "bytes": size}, f)
                os.replace(tmp, os.path.join(d, "meta.json"))
            self._known_dirs.add(d)
        return d

    def get(
        self,
        url: str,
        content_hash: str,
        size: int,
        offset: int,
        length: int,
        checksum: int | None,
        *,
        consume: bool = True,
    ) -> memoryview | None:
        """The cached bytes of ``[offset, offset+length)`` (a read-only memory map of the cache
        file), checked against ``checksum``; or None (absent, or a bad copy: deleted).

        Cache files are never modified in place (only written whole and renamed, or deleted),
        so a map stays valid even if the file is evicted meanwhile."""
        d = self._dir(url, content_hash, size)
        path = os.path.join(d, f"{offset}-{length}.blk")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            ok = os.fstat(fd).st_size == length and length > 0
            data = map_readonly(fd, length) if ok else None
        finally:
            os.close(fd)
        if data is None or (checksum is not None and hash64(data) != checksum):
            STATS.add("cache_corrupt")
            self._drop(path)
            return None
        if consume:
            with contextlib.suppress(OSError):
                os.utime(path)  # consumed now: eligible for eviction in LRU order
        STATS.add("cache_bytes_read", length)
        return data

    # -- fetch claims: one process fetches a block, the others wait for its copy -------------
    def _claim_path(self, url: str, content_hash: str, size: int, offset: int) -> str:
        d = self._dir(url, content_hash, size)
        return os.path.join(self._locks, f"{os.path.basename(d)}-{offset}.lock")

    def claim(self, url: str, content_hash: str, size: int, offset: int) -> tuple | None:
        """Try to become the one fetcher of a block (any thread or process using this cache);
        returns a claim for :meth:`release`, or None when someone else is fetching it."""
        if fcntl is None:
            return (None, None)
        path = self._claim_path(url, content_hash, size, offset)
        fd = _open_lock(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _close_lock(fd)
            return None
        return (fd, path)

    def wait_claim(
        self, url: str, content_hash: str, size: int, offset: int, timeout: float = 60.0
    ) -> tuple | None:
        """Block until the block's fetcher is done (or ``timeout``), then claim it."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            claim = self.claim(url, content_hash, size, offset)
            if claim is not None or time.monotonic() > deadline:
                return claim
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def release(self, claim: tuple | None) -> None:
        if claim is None or claim[0] is None:
            return
        fd, path = claim
        with contextlib.suppress(OSError):
            os.remove(path)  # a waiter holding the old file then finds the block cached
        _close_lock(fd)

    def has(self, url: str, content_hash: str, size: int, offset: int, length: int) -> bool:
        d = self._dir(url, content_hash, size)
        return os.path.exists(os.path.join(d, f"{offset}-{length}.blk"))

    def touch(self, url: str, content_hash: str, size: int, offset: int, length: int) -> None:
        """Mark a block consumed (a block read from memory, not from this cache)."""
        d = self._dir(url, content_hash, size)
        with contextlib.suppress(OSError):
            os.utime(os.path.join(d, f"{offset}-{length}.blk"))

    def put(
        self,
        url: str,
        content_hash: str,
        size: int,
        offset: int,
        data: bytes,
        *,
        ahead: bool = False,
    ) -> bool:
        """Store verified bytes (the caller checked them). ``ahead``: fetched before use.

        The bytes go to a temporary file first (outside the cache's count, at most one block
        per writer); the room check and the rename happen under the lock, so the block files
        never exceed the limit, whatever the number of writers; the count is raised before
        the rename, so a crash in between over-counts (repaired by the next eviction scan)
        and never lets the cache grow past its limit."""
        return self._store(url, content_hash, size, offset, data, ahead=ahead) is not None

    def put_mapped(
        self, url: str, content_hash: str, size: int, offset: int, data: bytes | memoryview
    ) -> memoryview | None:
        """:meth:`put`, returning the stored copy mapped read-only, as :meth:`get` would (not
        checked again: the caller made it from checked bytes); None where this call did not
        store it (already there, written by someone else: :meth:`get` and check it; no room).

        The map is made from the temporary file before its rename, so the writer does not
        open, stat and map the file again (~0.05 ms a 1 MiB block, a tenth of storing it)."""
        stored = self._store(url, content_hash, size, offset, data, ahead=False, keep_map=True)
        return stored if isinstance(stored, memoryview) else None

    def _store(
        self,
        url: str,
        content_hash: str,
        size: int,
        offset: int,
        data: bytes | memoryview,
        *,
        ahead: bool,
        keep_map: bool = False,
    ) -> memoryview | bool | None:
        """What :meth:`put` and :meth:`put_mapped` share: None if not stored, else the map
        (``keep_map``) or True."""
        d = self._dir(url, content_hash, size)
        length = len(data)
        final = os.path.join(d, f"{offset}-{length}.blk")
        if length > self.limit or length <= 0 or os.path.exists(final):
            return None
        tmp = os.path.join(self._tmp, f"{os.getpid()}-{uuid.uuid4().hex}.part")
        stored: memoryview | bool | None = None
        try:
            # Written before the lock is taken (writers do not wait for each other's writes);
            # counted, and renamed into place, under it.
            view = _write_file(tmp, data, keep_map)
            if ahead:
                t = time.time() + AHEAD_SECONDS
                os.utime(tmp, (t, t))
            with self._locked():
                if os.path.exists(final):
                    return None  # another process stored it first
                usage = self._make_room(length)
                if usage is None:
                    return None
                self._write_usage(usage)
                try:
                    os.replace(tmp, final)
                except FileNotFoundError:  # its directory emptied and removed (clear())
                    os.makedirs(d, exist_ok=True)
                    os.replace(tmp, final)
            stored = view if view is not None else True
        except OSError:
            return None
        finally:
            if stored is None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
        STATS.add("cache_bytes_written", length)
        return stored

    def discard(self, url: str, content_hash: str, size: int, offset: int, length: int) -> None:
        """Delete one cached copy (found bad by its user)."""
        d = self._dir(url, content_hash, size)
        self._drop(os.path.join(d, f"{offset}-{length}.blk"))

    def _drop(self, path: str) -> None:
        with self._locked():
            try:
                size = os.stat(path).st_size
                os.remove(path)
            except FileNotFoundError:
                return
            usage = self._read_usage()
            if usage is not None:
                self._write_usage(usage - size)

    # -- listing and clearing (``fastload cache``) -----------------------------------------
    def entries(self) -> list[CacheEntry]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for d in sorted(os.scandir(self._shards), key=lambda e: e.name):
                if not d.is_dir(follow_symlinks=False):
                    continue
                try:
                    with open(os.path.join(d.path, "meta.json")) as f:
                        meta = json.load(f)
                except (OSError, ValueError):
                    meta = {}
                blocks = nbytes = 0
                for f in os.scandir(d.path):
                    if _BLOCK_RE.match(f.name) and f.is_file(follow_symlinks=False):
                        blocks += 1
                        nbytes += f.stat(follow_symlinks=False).st_size
                out.append(
                    CacheEntry(
                        d.name,
                        str(meta.get("url", "?")),
                        str(meta.get("hash", "?")),
                        blocks,
                        nbytes,
                    )
                )
        return out

    def usage(self) -> int:
        """Bytes of block files now in the cache."""
        return self._scan()[0]

    def clear(self, url_prefix: str | None = None) -> int:
        """Delete cached blocks (all, or those of objects whose URL starts with ``url_prefix``);
        returns the bytes freed. Deletes only files of the cache's own layout."""
        freed = 0
        with self._locked():
            for entry in self.entries():
                if url_prefix is not None and not entry.url.startswith(url_prefix):
                    continue
                d = os.path.join(self._shards, entry.key)
                for f in os.scandir(d):
                    if (_BLOCK_RE.match(f.name) or f.name == "meta.json") and f.is_file(
                        follow_symlinks=False
                    ):
                        with contextlib.suppress(FileNotFoundError):
                            size = f.stat(follow_symlinks=False).st_size
                            os.remove(f.path)
                            freed += size if f.name != "meta.json" else 0
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only if now empty
            self._write_usage(self._scan()[0])
            if url_prefix is None:  # fetch claims nobody holds (left by crashed processes)
                with contextlib.suppress(FileNotFoundError):
                    for f in os.scandir(self._locks):
                        if f.name.endswith(".lock") and f.is_file(follow_symlinks=False):
                            fd = _open_lock(f.path, os.O_RDWR)
                            try:
                                if fcntl is not None:
                                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                                os.remove(f.path)
                            except OSError:
                                pass  # held: someone is fetching that block now
                            finally:
                                _close_lock(fd)
        self._known_dirs.clear()
        return freed


def _write_file(path: str, data: bytes | memoryview, keep_map: bool) -> memoryview | None:
    """Writes ``data`` to a new file at ``path``; returns it mapped read-only if ``keep_map``
    (from the same descriptor: no second open)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        return map_readonly(fd, len(view)) if keep_map else None
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
