"""Read-ahead of one remote shard's blocks: fetched in the store's threads before they are read,
neighbours in one ranged GET, within a memory budget; once a process reads the shard densely,
the rest of it is fetched into the cache in a few large GETs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING

import numpy as np

from ..iostats import STATS

if TYPE_CHECKING:
    from .shard import RemoteSource

__all__ = ["ReadAhead"]

DENSE = 4  # read-ahead fills gaps once a process asked for 1/DENSE of a shard's blocks


class ReadAhead:
    """The blocks of ``source`` fetched ahead of their reads: :meth:`prefetch` schedules them,
    :meth:`take` hands the one a read needs to it (its fetch may still be running)."""

    def __init__(self, source: RemoteSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, Future] = OrderedDict()  # block -> its bytes
        self._pending_bytes = 0  # this shard's part of store.pending_bytes
        self._wanted: set[int] = set()  # blocks this process was asked to read ahead
        self._fill_at = 0  # dense reading: blocks before this one were fetched or queued
        self._closed = False

    def forked(self) -> None:
        """In a forked child: the parent's locks may have been held at the fork and its
        read-ahead will never finish here (what it asked for still counts as wanted)."""
        self._lock = threading.Lock()
        self._pending = OrderedDict()
        self._pending_bytes = 0
        self._fill_at = 0

    def take(self, b: int) -> Future | None:
        """The fetch of block ``b`` scheduled earlier, if any (it is no longer pending)."""
        with self._lock:
            fut = self._pending.pop(b, None)
            if fut is not None:
                self._add_pending(-self.source.entry(b)[1])
        return fut

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for fut in self._pending.values():
                fut.cancel()
            self._pending.clear()
            self.source.store.add_pending(-self._pending_bytes)
            self._pending_bytes = 0

    def prefetch(self, blocks: Iterable[int]) -> int:
        """Start fetching ``blocks`` (in the order given) in the background, neighbours in
        one request; blocks already cached, in flight, or over the memory budget are skipped.
        Returns how many blocks were scheduled."""
        source = self.source
        table = source.blocks
        if table is None:
            return 0
        store = source.store
        opts = store.options
        maps, uid = store.maps, source.uid
        todo: list[int] = []
        with self._lock:
            budget = opts.memory_limit - store.pending_bytes
            for b in blocks:
                b = int(b)
                if b in self._pending or b in todo or (uid, b) in maps:
                    continue  # in flight, or cached and mapped already (no file lookup)
                self._wanted.add(b)
                if source.cached(b):
                    continue
                length = source.entry(b)[1]
                if length > budget:
                    self._trim()
                    budget = opts.memory_limit - store.pending_bytes
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
            runs = _runs(todo, table, opts.max_request)
            for run in runs:
                futures = {b: Future() for b in run}
                for b, f in futures.items():
                    self._pending[b] = f
                    self._add_pending(source.entry(b)[1])
                store.pool.submit(self._run_task, run, futures)
        STATS.add("prefetched_blocks", len(todo))
        if dense:
            self._fill_more()
        return len(todo)

    def _dense(self) -> bool:
        """Whether this process reads the shard densely: it asked for 1/DENSE of its blocks
        (a shuffled epoch soon asks for all of them), and a few shards fit in the cache."""
        source = self.source
        cache = source.store.cache
        return (
            cache is not None
            and DENSE * len(self._wanted) >= len(source.table)
            and DENSE * source.size <= cache.limit
        )

    def _fill_more(self) -> None:
        """Dense reading: fetch the rest of the shard into the cache in the background, in
        order, in GETs of up to ``max_request``, a few at a time (``RemoteStore.start_fill``);
        each finished GET queues the next. Blocks wanted later are then read from the cache
        instead of costing a round trip each, just when they are needed."""
        source = self.source
        store = source.store
        maps, uid = store.maps, source.uid
        limit = store.options.max_request
        n = len(source.table)
        runs: list[list[int]] = []
        with self._lock:
            while self._fill_at < n and not self._closed and store.start_fill():
                run: list[int] = []
                size = 0
                while self._fill_at < n:
                    b = self._fill_at
                    length = source.entry(b)[1]
                    if run and size + length > limit:
                        break
                    self._fill_at += 1
                    if b in self._pending or (uid, b) in maps or source.cached(b):
                        if run:
                            break
                        continue
                    run.append(b)
                    size += length
                if not run:
                    store.end_fill()
                    break
                runs.append(run)
        for run in runs:
            store.pool.submit(self._fill_task, run)

    def _fill_task(self, run: list[int]) -> None:
        try:
            if not self._closed:
                self.source.fetch_run(run, ahead=True)
        except Exception:
            pass  # read-ahead only: the read that needs these blocks retries, or raises
        finally:
            self.source.store.end_fill()
        if not self._closed:
            self._fill_more()

    def _fill_gaps(self, todo: list[int], budget: int) -> list[int]:
        """``todo`` (sorted) with the blocks between two of its neighbours added, where the
        gap is short and its blocks are not fetched or in flight (lock held). Used once this
        process has asked for a large part of the shard (a shuffled epoch reads nearly every
        block of it): its blocks then come in a few GETs of up to ``max_request`` bytes
        rather than one GET per block, which is what a server serves fastest (moto: 2.5x
        the bytes/s of 1 MiB GETs), and the gaps are read soon anyway. Gap blocks go to the
        cache like any read-ahead."""
        source = self.source
        sizes = source.table["stored_size"]
        limit = source.store.options.max_request // 2
        out = [todo[0]]
        for b in todo[1:]:
            gap = range(out[-1] + 1, b)
            if gap:
                nbytes = int(sizes[gap.start : gap.stop].sum())
                if nbytes <= min(limit, budget) and not any(
                    g in self._pending or source.cached(g) for g in gap
                ):
                    out.extend(gap)
                    budget -= nbytes
            out.append(b)
        return out

    def _add_pending(self, n: int) -> None:
        self._pending_bytes += n
        self.source.store.add_pending(n)

    def _trim(self) -> None:
        """Drop finished read-ahead nobody asked for yet, oldest first (lock held)."""
        store = self.source.store
        for b in list(self._pending):
            if store.pending_bytes <= store.options.memory_limit // 2:
                break
            fut = self._pending[b]
            if fut.done():
                del self._pending[b]
                self._add_pending(-self.source.entry(b)[1])

    def _run_task(self, run: list[int], futures: dict[int, Future]) -> None:
        if not any(f.set_running_or_notify_cancel() for f in futures.values()):
            return
        try:
            got = self.source.fetch_run(run, ahead=True)
        except BaseException as e:
            for f in futures.values():
                if not f.done():
                    f.set_exception(e)
            return
        for b, f in futures.items():
            if not f.done():
                f.set_result(got[b])


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
