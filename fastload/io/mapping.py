"""Read-only memory maps of files that hold no file descriptor.

Python's ``mmap.mmap`` keeps a ``dup()`` of the file's descriptor for as long as the map lives
(for its ``size()`` and ``resize()``), so every mapped shard, and every cached remote block a
process keeps mapped (up to ``RemoteOptions.mapped_blocks``, 1024), held an open file: a
dataset of a few hundred local shards in each of several workers, or one process's mapped
cache, reached the common limit of 1024 open files and failed with EMFILE. These maps are made
with mmap(2) itself, so the caller closes the descriptor at once; the pages are unmapped when
the last view of them is garbage (never while a view, or an array over one, is alive).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref

__all__ = ["map_readonly"]

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _mmap, _munmap = _libc.mmap, _libc.munmap
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
except (OSError, AttributeError):  # pragma: no cover - no C library to call (not POSIX)
    _mmap = _munmap = None

_FAILED = ctypes.c_void_p(-1).value  # MAP_FAILED


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
    unmap = weakref.finalize(pages, _munmap, address, length)  # when every view is gone
    # Not at interpreter exit, while a daemon thread might still read it: the process's
    # end unmaps everything anyway.
    unmap.atexit = False
    return memoryview(pages).cast("B").toreadonly()
