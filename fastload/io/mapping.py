"""Read-only memory maps of files that hold no file descriptor.

Python's ``mmap.mmap`` keeps a ``dup()`` of the file's descriptor for as long as the map lives
(for its ``size()`` and ``resize()``), so every mapped shard, and every cached remote block a
process keeps mapped (up to ``RemoteOptions.mapped_blocks``, 1024), held an open file: a
dataset of a few hundred local shards in each of several workers, or one process's mapped
cache, reached the common limit of 1024 open files and failed with EMFILE. These maps are made
with mmap(2) itself, so the caller closes the descriptor at once; the pages are unmapped when
the last view of them is garbage (never while a view, or an array over one, is alive).

``release`` lets a process's page-table entries for part of a map go (the pages stay in the
page cache, shared, and come back on the next touch): a shard's index is read whole once, to
check it, and after that only the entries of the records read are needed in each process.
``release_pages`` does the same for a slice of a map (a decoded image's bytes, say).

``note_read`` bounds what a process keeps mapped of its data however much of it it reads.
Pages a process touches through a shared file map stay mapped in it (counted in its RSS, PSS
and, while no other process maps them, its private memory) until the map goes: a process
reading records at random across a dataset larger than memory came to map every page it had
touched, hundreds of MB per process after a few thousand reads. Every read of mapped data
(a record, a batch's gather, a compressed block) is noted with its size, once per call; once
the data a process maps has grown past its budget (``FASTLOAD_MAPPED_BUDGET``, default 256 MiB)
since the last release, it releases every page of every map made here (one madvise call per
run of adjoining maps): the pages stay in the page cache, shared, and the next touch maps them
again (a minor fault, no I/O).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import weakref

import numpy as np

from ..utils import parse_size

__all__ = [
    "map_readonly",
    "release",
    "release_pages",
    "note_read",
    "release_all",
    "mapped_budget",
    "set_mapped_budget",
    "release_count",
    "FAULT_AROUND",
    "FAULT_REGION",
    "DEFAULT_MAPPED_BUDGET",
]

FAULT_AROUND = 64 << 10  # what a read fault of a file map maps around it (Linux's default)
#: The most a read fault of a file map may map around it: pages of the 2 MiB-aligned block of
#: addresses that one page table covers, which the kernel never crosses. Fault-around maps 64
#: KiB of it, but a page cache holding the file in large folios (Linux 6.x on ext4 and xfs)
#: maps a whole folio: touching one page of a freshly written file mapped 1 MiB here.
FAULT_REGION = 2 << 20
#: Bytes of mapped data a process reads (as :func:`note_read` counts them) before it lets the
#: pages of its maps go: at most about this much of its data stays mapped in it. Random reads
#: over more data than the budget fault about once a record (each fault maps 64 KiB or more
#: around a 4 KB token row): a loader bound by its CPU read 600 MB of token rows through maps at
#: 0.53x its unbounded rate with 64 MiB, 0.59x with 256 MiB (datasets up to the budget pay
#: nothing). The loader's gathers of such data now read with pread instead (fastload.io.files).
DEFAULT_MAPPED_BUDGET = 256 << 20

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _mmap, _munmap, _madvise = _libc.mmap, _libc.munmap, _libc.madvise
    _mmap.restype = ctypes.c_void_p
    _mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int64,
    ]
    _munmap.restype = ctypes.c_int
    _munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _madvise.restype = ctypes.c_int
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
except (OSError, AttributeError):  # pragma: no cover - no C library to call (not POSIX)
    _mmap = _munmap = _madvise = None

_FAILED = ctypes.c_void_p(-1).value  # MAP_FAILED
_PAGE = mmap.PAGESIZE
# The maps made here, by address: release() touches nothing else (MADV_DONTNEED on private
# memory would discard its contents; on these shared read-only file maps it loses nothing).
_MAPS: dict[int, int] = {}
# Held while release_all() walks _MAPS, and by _unmap: no map is unmapped (and its addresses
# reused by other memory) between the walk reading its address and its madvise.
_LOCK = threading.RLock()
_MAPS_CHANGED = [0]  # counts changes to _MAPS


def map_readonly(fd: int, length: int, offset: int = 0) -> memoryview:
    """``length`` bytes of the open file ``fd`` from ``offset`` (a multiple of the page
    size), mapped read-only and shared (the page cache's own pages). ``fd`` may be closed
    as soon as this returns."""
    if length <= 0:
        raise ValueError(f"cannot map {length} bytes")
    if (
        _mmap is None or _munmap is None
    ):  # pragma: no cover - the portable map, which keeps a descriptor
        return memoryview(mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=offset))
    address = _mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
    if address is None or address == _FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of {length} bytes failed: {os.strerror(err)}")
    pages = (ctypes.c_char * length).from_address(address)
    with _LOCK:
        _MAPS[address] = length
        _MAPS_CHANGED[0] += 1
    unmap = weakref.finalize(pages, _unmap, address, length)  # when every view is gone
    # Not at interpreter exit, while a daemon thread might still read it: the process's
    # end unmaps everything anyway.
    unmap.atexit = False
    return memoryview(pages).cast("B").toreadonly()


def _unmap(address: int, length: int) -> None:
    with _LOCK:
        _MAPS.pop(address, None)
        _MAPS_CHANGED[0] += 1
        if _SWEEP.thread == threading.get_ident():
            # The thread walking the maps let the last view go (a collection in the walk):
            # the walk may still hold this address, so it unmaps it itself when done.
            _SWEEP.deferred.append((address, length))
        elif _munmap is not None:  # (always, where a map was made)
            _munmap(address, length)


def release(mapped: memoryview, offset: int, length: int) -> bool:
    """This process no longer needs ``mapped[offset : offset + length]`` resident, where
    ``mapped`` is a whole map from :func:`map_readonly`: the whole pages inside that range
    leave the process's memory (MADV_DONTNEED) and come back from the page cache, unchanged,
    when touched again. Returns whether anything was released (False for a buffer that is
    not such a map, or where the call is not available)."""
    if _madvise is None or not hasattr(mmap, "MADV_DONTNEED") or length <= 0:
        return False
    base = np.frombuffer(mapped, np.uint8).ctypes.data if len(mapped) else 0
    if _MAPS.get(base) != len(mapped) or offset < 0 or offset + length > len(mapped):
        return False
    start = -(-(base + offset) // _PAGE) * _PAGE  # whole pages only
    end = (base + offset + length) // _PAGE * _PAGE
    return end > start and _madvise(start, end - start, mmap.MADV_DONTNEED) == 0


def release_pages(view: memoryview, region: int = 0) -> int:
    """Drop this process's page-table entries for the pages of ``view``, a slice of a map
    that :func:`map_readonly` made (anything else is left alone: on memory that is not a
    shared file mapping, MADV_DONTNEED would zero it), widened to whole ``region``-aligned
    blocks of addresses (a multiple of the page size; 0: the view's pages only) within the
    map. The pages stay in the page cache, shared, and the next access maps them again (a
    minor fault, no I/O); meanwhile they are no longer counted in this process's RSS or PSS.
    A loader worker decoding a dataset's images at random touches each page about once an
    epoch, so its maps would otherwise come to hold the whole dataset, where a read() into a
    buffer holds none of it. ``region=FAULT_REGION``: also every page a read of ``view`` may
    have mapped beside it, pages of the neighbouring records. Returns the bytes released."""
    align = max(region, _PAGE)
    if align % _PAGE:
        raise ValueError(f"region must be a multiple of the page size, got {region}")
    base = getattr(view, "obj", None)
    if _madvise is None or not hasattr(mmap, "MADV_DONTNEED") or not len(view):
        return 0
    if not isinstance(base, ctypes.Array):
        return 0
    low = ctypes.addressof(base)
    if _MAPS.get(low) != len(base):
        return 0
    start = low if len(view) == len(base) else int(np.frombuffer(view, np.uint8).ctypes.data)
    first = max(low, start // align * align)  # the map starts on a page
    end = min(low + len(base), -(-(start + len(view)) // align) * align)
    if end <= first or _madvise(first, end - first, mmap.MADV_DONTNEED) != 0:
        return 0
    return end - first


class _Sweep:
    """This process's accounting of the data it reads through maps."""

    def __init__(self) -> None:
        self.budget = _budget_from_environment()
        self.noted = 0  # bytes noted since the last look at what is mapped
        self.baseline: int | None = None  # file pages mapped just after the last release
        self.estimated = 0  # where they cannot be looked at: bytes noted since then
        self.thread: int | None = None  # the thread in release_all(), if any
        self.deferred: list[tuple[int, int]] = []  # maps let go during it
        self.releases = 0
        self.runs: list[tuple[int, int]] = []  # _runs(_MAPS), as _MAPS was at change runs_of
        self.runs_of = -1


def _budget_from_environment() -> int | None:
    raw = os.environ.get("FASTLOAD_MAPPED_BUDGET", "").strip()
    if not raw:
        return DEFAULT_MAPPED_BUDGET
    if raw.lower() == "none":
        return None
    try:
        return parse_size(raw)
    except ValueError as e:
        raise ValueError(f"environment variable FASTLOAD_MAPPED_BUDGET: {e}") from None


_SWEEP = _Sweep()


def _after_fork() -> None:
    # A child maps none of its parent's data pages (fork copies no page-table entries of
    # shared file maps), and no thread of the parent is there to finish a release.
    global _LOCK
    _LOCK = threading.RLock()
    _SWEEP.noted, _SWEEP.baseline, _SWEEP.thread, _SWEEP.deferred = 0, None, None, []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def mapped_budget() -> int | None:
    """This process's budget of mapped data in bytes (None: unbounded)."""
    return _SWEEP.budget


def release_count() -> int:
    """How many times this process let its maps' pages go for its budget."""
    return _SWEEP.releases


def set_mapped_budget(budget: int | str | None) -> None:
    """Set this process's budget of mapped data (see :func:`note_read`): bytes, a size such
    as ``"256MB"``, or None for no bound. Processes started later read theirs from
    ``FASTLOAD_MAPPED_BUDGET`` (forked ones inherit this one's)."""
    _SWEEP.budget = None if budget is None else parse_size(budget)
    _SWEEP.noted, _SWEEP.baseline = 0, None


def note_read(records: int, nbytes: int) -> None:
    """``records`` records (or blocks) of ``nbytes`` bytes in all were just read, through
    maps made here or not. Called once per read call (a batch), never per record: ~0.2 us.

    Each read counts its bytes and a fault-around (what a fault maps beside it); every
    sixteenth of the budget so counted, this process's mapped file pages are looked at
    (``/proc/self/statm``, ~10 us), and past the budget beyond what was mapped just after
    the last release (the libraries' pages, mostly), every page of every map made here goes
    (:func:`release_all`). Called after the read, so that a batch larger than the budget
    is let go at once. Looked at rather than estimated: a fault may map a whole large folio
    of the page cache, more than its fault-around, and a read of pages already mapped maps
    nothing."""
    sweep = _SWEEP
    sweep.noted += nbytes + records * FAULT_AROUND  # (a lost update between threads: harmless)
    budget = sweep.budget
    if budget is None or sweep.noted < budget >> 4:
        return
    sweep.noted = 0
    mapped = _file_pages()
    if mapped is None:  # no /proc: what was noted stands for what was mapped
        sweep.estimated += budget >> 4
        if sweep.estimated > budget:
            sweep.estimated = 0
            release_all()
        return
    if sweep.baseline is None or mapped - sweep.baseline > budget:
        release_all()
        sweep.baseline = _file_pages()


def _file_pages() -> int | None:
    """Bytes of file (and shared memory) pages this process maps, or None where unknown."""
    try:
        with open("/proc/self/statm", "rb", buffering=0) as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def release_all() -> int:
    """Let every page of every map made here go from this process (see :func:`release`):
    one madvise call per run of maps that follow one another in memory (maps are placed one
    after another: a process's hundreds of decompressed copies make a few runs; a call costs
    ~1-2 us, more with pages to let go). Safe while other threads read the maps (a page
    released under a reader is mapped again by its next touch). Returns the calls made."""
    if _madvise is None or not hasattr(mmap, "MADV_DONTNEED"):
        return 0
    with _LOCK:
        sweep = _SWEEP
        if sweep.thread is not None:  # (this thread, re-entered from a finalizer)
            return 0
        sweep.thread = threading.get_ident()
        try:
            if sweep.runs_of != _MAPS_CHANGED[0]:  # (maps come and go far less often)
                sweep.runs, sweep.runs_of = _runs(_MAPS), _MAPS_CHANGED[0]
            runs = sweep.runs
            for address, length in runs:
                _madvise(address, length, mmap.MADV_DONTNEED)
            sweep.releases += 1
            return len(runs)
        finally:
            sweep.thread = None
            deferred, sweep.deferred = sweep.deferred, []
            for address, length in deferred:
                _munmap(address, length)  # pyright: ignore[reportOptionalCall]


def _runs(maps: dict[int, int]) -> list[tuple[int, int]]:
    """``maps`` (address -> length) as runs of maps that adjoin: a run holds nothing but
    these maps (no gap where other memory could lie), so one madvise covers it."""
    runs: list[list[int]] = []
    for address in sorted(maps):
        length = -(-maps[address] // _PAGE) * _PAGE  # a map ends on a page boundary
        if runs and runs[-1][0] + runs[-1][1] == address:
            runs[-1][1] += length
        else:
            runs.append([address, length])
    return [(a, n) for a, n in runs]
