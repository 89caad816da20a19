"""Counters of remote reads in this process: requests, retries, bytes, cache hits and misses.

``fastload.io.io_stats()`` (and ``Dataset.io_stats()``) return them as a dict; the loader adds
each worker's increments to ``loader.stats()["io"]``.
"""

from __future__ import annotations

import os
import threading

__all__ = ["IOStats", "io_stats", "STATS"]

FIELDS = (
    "requests",
    "retries",
    "errors",
    "bytes_fetched",
    "cache_hits",
    "cache_misses",
    "cache_bytes_read",
    "cache_bytes_written",
    "cache_corrupt",
    "cache_evicted_bytes",
    "prefetched_blocks",
    "prefetch_hits",
    "wait_seconds",
)


class IOStats:
    """Thread-safe counters; :meth:`delta` gives what changed since its last call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = dict.fromkeys(FIELDS, 0)
        self._seen: dict[str, float] = dict.fromkeys(FIELDS, 0)
        self._moved = False  # anything added since the last delta()

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self._values[name] += amount
            self._moved = True

    def as_dict(self) -> dict:
        with self._lock:
            return dict(self._values)

    def delta(self) -> dict:
        """Increments since the previous call (only the counters that moved)."""
        if not self._moved:  # the usual case, once per batch: no lock, no dicts
            return {}
        with self._lock:
            self._moved = False
            out = {k: v - self._seen[k] for k, v in self._values.items() if v != self._seen[k]}
            self._seen = dict(self._values)
        return out

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(FIELDS, 0)
            self._seen = dict.fromkeys(FIELDS, 0)
            self._moved = False

    def _forked(self) -> None:
        # A forked child (a loader worker) starts from zero: otherwise the parent's counts
        # come back as the child's first increments, once per worker and epoch. The lock
        # may have been held by a thread that does not exist here.
        self._lock = threading.Lock()
        self._values = dict.fromkeys(FIELDS, 0)
        self._seen = dict.fromkeys(FIELDS, 0)
        self._moved = False


STATS = IOStats()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=STATS._forked)


def io_stats() -> dict:
    """This process's remote-read counters (all datasets together)."""
    return STATS.as_dict()
