"""Open descriptors of local files, for reads with pread(2) (``_core.RecordMap.read``).

Records read at random from a memory map fault once each and stay mapped in the process; past
the process's budget of mapped data (:mod:`fastload.io.mapping`) its maps are let go and every
read faults again. A pread copies a record out of the page cache in one system call and maps
nothing: a gather of 16 random 4 KB token rows out of 600 MB took 1.7 us a row with pread,
5.1 us through maps under the 256 MiB budget and 1.4 us through maps never let go (one
process, page cache warm).

Descriptors count against the process's limit of open files (often 1024): all the
:class:`OpenFiles` of a process hold at most a quarter of it together, and a dataset whose
shards would take more keeps its maps. They are closed when the :class:`OpenFiles` holding
them is garbage, never while a read through them may be running.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence

import numpy as np

__all__ = ["OpenFiles", "files_allowed"]

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]


_lock = threading.Lock()
_held = 0  # descriptors the OpenFiles of this process hold


def files_allowed() -> int:
    """How many more files readers may open: a quarter of the process's limit, the rest left
    to everything else it opens (sockets, pipes, a loader's shared memory), less those open
    already; 0 without pread."""
    if resource is None or not hasattr(os, "pread"):
        return 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    share = 1 << 20 if soft == resource.RLIM_INFINITY else soft // 4
    return max(0, share - _held)


def _close_all(fds: np.ndarray) -> None:
    global _held
    closed = 0
    for fd in fds.tolist():
        if fd >= 0:
            closed += 1
            try:
                os.close(fd)
            except OSError:
                pass
    fds[:] = -1  # (never read through a closed number: another file may take it)
    with _lock:
        _held -= closed


def _open_as(path: str, identity: Sequence[int]) -> int:
    """A read-only descriptor of ``path`` if it is the file ``identity`` names, else -1."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return -1
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == tuple(identity):
            return fd
    except OSError:
        pass
    os.close(fd)
    return -1


class OpenFiles:
    """Read-only descriptors of ``paths`` (``fds``, int32, one per path), each checked to be
    the file ``identities`` says (``(st_dev, st_ino)``, as the caller mapped it): a path
    replaced since, or one past what :func:`files_allowed` leaves, opens as -1, and its reads
    go the caller's other way."""

    def __init__(self, paths: Sequence[str], identities: Sequence[tuple[int, int]]) -> None:
        global _held
        if len(paths) != len(identities):
            raise ValueError(f"{len(paths)} paths but {len(identities)} identities")
        self.fds = np.full(len(paths), -1, np.int32)
        with _lock:
            n = min(len(paths), files_allowed())
            _held += n  # given back as they close, or below for those not opened
        self._finalizer = weakref.finalize(self, _close_all, self.fds)
        unused = n
        try:
            for i in range(n):
                fd = _open_as(paths[i], identities[i])
                if fd >= 0:
                    self.fds[i] = fd
                    unused -= 1
        finally:
            with _lock:
                _held -= unused

    @property
    def complete(self) -> bool:
        """Whether every file is open."""
        return bool((self.fds >= 0).all())

    def close(self) -> None:
        """Close every descriptor now: only once no read through them can be running."""
        self._finalizer()
