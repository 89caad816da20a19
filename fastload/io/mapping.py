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
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref

import numpy as np

__all__ = ["map_readonly", "release", "release_pages", "FAULT_AROUND"]

FAULT_AROUND = 64 << 10  # what a read fault of a file map maps around it (Linux's default)

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
    _MAPS[address] = length
    unmap = weakref.finalize(pages, _unmap, address, length)  # when every view is gone
    # Not at interpreter exit, while a daemon thread might still read it: the process's
    # end unmaps everything anyway.
    unmap.atexit = False
    return memoryview(pages).cast("B").toreadonly()


def _unmap(address: int, length: int) -> None:
    _MAPS.pop(address, None)
    if _munmap is not None:  # (always, where a map was made)
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


def release_pages(view: memoryview, around: int = 0) -> int:
    """Drop this process's page-table entries for the pages of ``view``, a slice of a map
    that :func:`map_readonly` made (anything else is left alone: on memory that is not a
    shared file mapping, MADV_DONTNEED would zero it), and for ``around`` bytes on each side
    of it within the map. The pages stay in the page cache, shared, and the next access maps
    them again (a minor fault, no I/O); meanwhile they are no longer counted in this
    process's RSS or PSS. A loader worker decoding a dataset's images at random touches
    each page about once an epoch, so its maps would otherwise come to hold the whole
    dataset, where a read() into a buffer holds none of it. ``around``: a read fault maps
    the pages around it too (fault-around, 64 KiB), pages of the neighbouring records.
    Returns the bytes released."""
    base = getattr(view, "obj", None)
    if _madvise is None or not hasattr(mmap, "MADV_DONTNEED") or not len(view):
        return 0
    if not isinstance(base, ctypes.Array):
        return 0
    low = ctypes.addressof(base)
    if _MAPS.get(low) != len(base):
        return 0
    start = low if len(view) == len(base) else int(np.frombuffer(view, np.uint8).ctypes.data)
    first = max(low, (start - around) // _PAGE * _PAGE)  # the map starts on a page
    end = min(low + len(base), -(-(start + len(view) + around) // _PAGE) * _PAGE)
    if end <= first or _madvise(first, end - first, mmap.MADV_DONTNEED) != 0:
        return 0
    return end - first
