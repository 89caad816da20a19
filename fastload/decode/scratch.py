"""Per-thread scratch buffers, reused from image to image.

A decoded 640x480 image is 1.2 MB; a fresh ``np.empty`` of that size is an ``mmap`` whose
pages fault in on first touch, every time. Keeping one buffer per thread and slot (growing it
when a larger image comes) avoids that, and keeps threads that decode side by side apart.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["scratch", "MAX_CACHED_BYTES"]

# A buffer larger than this is handed out fresh and not kept (an occasional huge image should
# not pin its memory in every worker thread for the rest of the run).
MAX_CACHED_BYTES = 64 << 20

_local = threading.local()


def scratch(slot: str, shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous uint8 array of ``shape`` with unspecified contents, private to this
    thread. The same ``slot`` returns (a view of) the same memory until the next call."""
    nbytes = 1
    for n in shape:
        nbytes *= n
    if nbytes > MAX_CACHED_BYTES:
        return np.empty(shape, np.uint8)
    bufs: dict[str, np.ndarray] | None = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = {}
        _local.bufs = bufs
    buf = bufs.get(slot)
    if buf is None or buf.size < nbytes:
        # Round up so that a run of slightly growing images does not reallocate each time.
        buf = bufs[slot] = np.empty(
            max(nbytes, int(buf.size * 1.25) if buf is not None else 0), np.uint8
        )
    return buf[:nbytes].reshape(shape)
