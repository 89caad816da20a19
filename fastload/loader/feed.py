"""The consumer's side of the workers during an epoch: the plan's batches sent out as tasks the
way the split strategy says (splits.py), each with a free slab, and their results received,
merged and handed on in order (or as they come, with ``in_order=False``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..read.contract import Readable
from .fill import fill_batch
from .layout import BatchLayout
from .messages import BatchResult, BatchTask, Failed
from .pool import WorkerPool
from .sampling import hinting
from .slabs import SlabPool
from .splits import Split

__all__ = ["MessageSizer", "WorkerFeed", "drain", "filled_here"]

SMALL_BATCH_BYTES = 4 << 20  # batches smaller than this may share a message to a worker


class MessageSizer:
    """How many batches to put in one message to a worker: about 4 ms of work. Each message
    costs the consumer a pipe write that wakes a worker (~0.25 ms of its wall time on 2 cores)
    and a read, so small batches travel many to a message (each batch in flight holds a
    slab)."""

    TARGET_SECONDS = 0.004
    MAX_BATCHES = 16  # 32 was no faster (tokens, batch 16) and held twice the slabs

    def __init__(self, limit: int) -> None:
        self.limit = limit  # what the slab pool was sized for
        self.seconds_per_batch: float | None = None

    @classmethod
    def most(cls, slab_size: int) -> int:
        """Batches of slabs of ``slab_size`` bytes one message may carry (small ones only)."""
        return max(1, min(cls.MAX_BATCHES, SMALL_BATCH_BYTES // slab_size))

    @property
    def batches(self) -> int:
        if not self.seconds_per_batch:
            return 1
        return max(1, min(self.limit, int(self.TARGET_SECONDS / self.seconds_per_batch)))

    def observe(self, timings: dict | None) -> None:
        if timings:
            t = timings.get("read", 0.0) + timings.get("decode", 0.0)
            old = self.seconds_per_batch
            self.seconds_per_batch = t if old is None else 0.8 * old + 0.2 * t


class WorkerFeed:
    """One epoch's batches through ``pool``. Each worker has up to ``prefetch_factor``
    messages in flight; a message carries as many batches as fit in about 4 ms of work (one,
    for image batches; up to ``per_message``, for small token batches), since every message
    costs both sides a wake-up. ``rng_seed(j)``: the augmentation seed of the epoch's j-th
    batch."""

    def __init__(
        self,
        pool: WorkerPool,
        slabs: SlabPool,
        split: Split,
        *,
        prefetch_factor: int,
        per_message: int,
        in_order: bool,
        timeout: float,
        rng_seed: Callable[[int], tuple],
    ) -> None:
        self.pool, self.slabs, self.split = pool, slabs, split
        self.prefetch_factor, self.per_message = prefetch_factor, per_message
        self.in_order, self.timeout = in_order, timeout
        self.rng_seed = rng_seed

    def batches(
        self, plan: Iterator[np.ndarray], deliver: Callable[[BatchResult], Any]
    ) -> Iterator[tuple[int, Any]]:
        """``(j, deliver(result))`` for each batch j of ``plan``, in order (or as they come);
        ``(j, Failed(error))`` for a batch whose filling or delivery raised (the iteration
        goes on). A worker that died or went silent ends it (WorkerDiedError,
        LoaderTimeoutError naming the batches it had)."""
        pool, slabs, split, in_order = self.pool, self.slabs, self.split, self.in_order
        limit = self.prefetch_factor
        pending = pool.pending  # messages in flight, per worker
        ready: dict[int, BatchResult] = {}
        shares: dict[int, list[BatchResult]] = {}  # batch -> the shares received so far
        sizer = MessageSizer(self.per_message)
        next_batch = sent = turn = 0
        exhausted = False
        try:
            while True:
                while not exhausted:
                    if split.busy(pending, turn, limit):
                        break
                    want, idle = split.batches_per_message(sizer), sent == next_batch
                    if not idle and slabs.free() < want:
                        # Wait for a whole message's slabs: a consumer slower than the
                        # workers frees them one batch at a time, and messages of one batch
                        # each would cost it a worker's wake-up per batch.
                        break
                    tasks = self._tasks(plan, sent, want, idle=idle)
                    if not tasks:
                        exhausted = sent == next_batch or tasks is None
                        break
                    turn = split.submit(pool, tasks, slabs, turn)
                    sent += len(tasks)
                if next_batch == sent and exhausted:
                    return
                while (next_batch if in_order else next(iter(ready), None)) not in ready:
                    awaited = next_batch if in_order else None
                    worker, results = pool.get(self.timeout, awaited)
                    pending[worker] -= 1
                    for r in results:
                        back = pool.returned(r.slab, worker, r.batch)
                        if r.batch < 0:  # its last word (worker_init_fn failed...): it is gone
                            pool.broken = True
                            if r.error is not None:
                                r.error.reraise()
                            raise RuntimeError(f"fastload worker {worker} ended without a word")
                        if r.parts > 1:
                            shares.setdefault(r.batch, []).append(r)
                            if not back:
                                continue
                            r = split.merge(shares.pop(r.batch))
                        ready[r.batch] = r
                        sizer.observe(r.timings)
                result = ready.pop(next_batch if in_order else next(iter(ready)))
                next_batch += 1
                if result.error is not None:
                    slabs.release(result.slab)
                    yield result.batch, Failed(result.error.exception())
                    continue
                try:
                    batch = deliver(result)
                except Exception as e:  # (its lease has freed the slab)
                    yield result.batch, Failed(e)
                    continue
                yield result.batch, batch
        finally:
            for r in ready.values():  # filled but never delivered (an error, or a break)
                slabs.release(r.slab)

    def _tasks(
        self, plan: Iterator[np.ndarray], first: int, count: int, idle: bool
    ) -> list[BatchTask] | None:
        """Up to ``count`` tasks for the next batches of ``plan``, each with a free slab.
        Returns None when the plan is exhausted and [] when no slab is free."""
        slabs = self.slabs
        tasks: list[BatchTask] = []
        # Grow only when nothing is in flight (the consumer holds every slab).
        while len(tasks) < count:
            grow = idle and not tasks
            slab = slabs.acquire(grow=grow)
            if slab is None:
                break
            try:
                indices = next(plan, None)
            except BaseException:
                slabs.release(slab)
                raise
            if indices is None:
                slabs.release(slab)
                return tasks or None
            batch = first + len(tasks)
            tasks.append(BatchTask(batch, slab, indices, self.rng_seed(batch)))
        return tasks


def drain(pool: WorkerPool, slabs: SlabPool, timeout: float) -> None:
    """Receive, and free the slabs of, the batches an earlier epoch left in flight."""
    while any(pool.pending):
        worker, results = pool.get(timeout)
        pool.pending[worker] -= 1
        for r in results:
            if r.slab >= 0 and pool.returned(r.slab, worker, r.batch):
                slabs.release(r.slab)


def filled_here(
    dataset: Readable,
    layout: BatchLayout,
    slabs: SlabPool,
    plan: Iterator[np.ndarray],
    rng_seed: Callable[[int], tuple],
    skip_bad: bool,
    deliver: Callable[[BatchResult], Any],
) -> Iterator[tuple[int, Any]]:
    """``(j, deliver(result))`` for each batch j of ``plan``, filled in this process (no
    workers), with read-ahead hints for a remote dataset; ``(j, Failed(error))`` for a batch
    that raised (the iteration goes on, as torch's does)."""
    for j, indices in enumerate(hinting(dataset, plan)):
        slab = slabs.acquire(grow=True)
        try:
            listed, timings = fill_batch(
                dataset, layout, slabs.arrays[slab], indices, rng_seed(j), skip_bad=skip_bad
            )
        except Exception as e:
            slabs.release(slab)
            yield j, Failed(e)
            continue
        except BaseException:
            slabs.release(slab)
            raise
        bad = timings.pop("bad", None)
        try:
            batch = deliver(BatchResult(j, slab, len(indices), listed, timings, bad=bad))
        except Exception as e:
            yield j, Failed(e)
            continue
        yield j, batch
