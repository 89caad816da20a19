"""How the loader splits the work of filling batches among its workers: one named strategy per
way, chosen in one place (:func:`choose_split`), carried in each task by its code, and merging
the shares of a batch itself.

- :data:`WHOLE_BATCHES`: each batch filled whole by one worker, batches dealt to the workers
  in turn (as torch does), several small batches to a message;
- :data:`SHARED_IMAGES`: each batch of images to decode shared among the workers in
  contiguous rows, so a batch comes in a fraction of the time one worker takes;
- :data:`SHARED_BLOCKS`: each batch of a compressed dataset shared among worker processes by
  storage block, so that each decompresses only its own blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..read.contract import Readable
from .fill import block_share_rows, fill_batch, fill_block_share, share_rows
from .layout import BatchLayout
from .messages import WHOLE, BatchResult, BatchTask

if TYPE_CHECKING:
    from .feed import MessageSizer
    from .pool import WorkerPool
    from .slabs import SlabPool

__all__ = [
    "Split",
    "WHOLE_BATCHES",
    "SHARED_IMAGES",
    "SHARED_BLOCKS",
    "MIN_SHARE",
    "choose_split",
    "split_of",
]

MIN_SHARE = 16  # images a worker decodes at least, of a batch shared among workers


class Split:
    """A way to split the filling of batches among workers. The consumer asks it how many
    slabs to keep, whether another message may go out, and sends each batch's tasks through
    it; a worker fills a task as its strategy says; the consumer merges a batch's shares
    with the strategy that made them. Whole batches are the base case."""

    code = WHOLE
    name = "whole batches"

    def slab_count(self, workers: int, prefetch_factor: int, per_message: int) -> int:
        """Slabs to keep: one for every batch that can be in flight, plus the one the
        consumer is using (two in the consumer's own process)."""
        if not workers:
            return 2
        return workers * prefetch_factor * per_message + 2

    def busy(self, pending: list[int], turn: int, limit: int) -> bool:
        """Whether the next message must wait (``limit`` messages in flight to a worker)."""
        return pending[turn % len(pending)] >= limit

    def batches_per_message(self, sizer: MessageSizer) -> int:
        return sizer.batches

    def shares(self, n: int, workers: int) -> int:
        """Workers that share a batch of ``n`` records."""
        return 1

    def submit(self, pool: WorkerPool, tasks: list[BatchTask], slabs: SlabPool, turn: int) -> int:
        """Send ``tasks`` (the next batches) to the workers; returns the next turn."""
        worker = turn % pool.num_workers
        pool.submit(worker, tasks, slabs)
        pool.pending[worker] += 1
        return turn + 1

    # -- in the worker ----------------------------------------------------------------------
    def fill(
        self, dataset: Readable, layout: BatchLayout, slab: np.ndarray, task: BatchTask, skip: bool
    ) -> BatchResult:
        """Fill ``task``'s rows of its batch into ``slab`` (its contiguous share)."""
        share = (task.part, task.parts)
        listed, timings = fill_batch(
            dataset, layout, slab, task.indices, task.rng_seed, share, skip
        )
        lo, hi = share_rows(len(task.indices), *share)
        bad = timings.pop("bad", None)
        return BatchResult(task.batch, task.slab, hi - lo, listed, timings, None, *share, bad)

    def to_read(self, dataset: Readable, task: BatchTask) -> np.ndarray:
        """The records of ``task`` this worker reads (for its read-ahead hints)."""
        return task.indices[slice(*share_rows(len(task.indices), task.part, task.parts))]

    # -- back in the consumer ---------------------------------------------------------------
    def merge(self, shares: list[BatchResult]) -> BatchResult:
        """One batch's result from those of its shares (received in any order): samples,
        bytes, stage times and counters summed; listed fields joined in row order; the error
        of the first share that failed."""
        shares = sorted(shares, key=lambda r: r.part)
        first = shares[0]
        error = next((r.error for r in shares if r.error is not None), None)
        if error is not None:
            return BatchResult(first.batch, first.slab, error=error)
        samples = sum(r.samples for r in shares)
        bad = [b for r in shares for b in (r.bad or ())]
        listed = self._joined(shares, samples)
        timings = _summed([r.timings for r in shares])
        return BatchResult(first.batch, first.slab, samples, listed, timings, bad=bad or None)

    def _joined(self, shares: list[BatchResult], n: int) -> dict[str, Any]:
        """The listed fields of a batch whose shares hold contiguous rows, in order."""
        listed: dict[str, list] = {}
        for r in shares:
            for name, values in (r.listed or {}).items():
                listed.setdefault(name, []).append(values)
        return {
            name: (
                np.concatenate(v)
                if isinstance(v[0], np.ndarray)
                else [x for part in v for x in part]
            )
            for name, v in listed.items()
        }


class SharedImages(Split):
    """Batches of images to decode shared among the workers, contiguous rows each: one worker
    decoding a whole batch of 256 took ~1 s before the first batch came, and workers filling
    whole batches side by side deliver them in bursts, which a consumer at 80% of the top
    rate waited on. A share costs more in messages than it saves below ``MIN_SHARE`` images,
    so smaller batches are shared among fewer workers (one: the batch whole)."""

    code = 1
    name = "shared image batches"

    def slab_count(self, workers: int, prefetch_factor: int, per_message: int) -> int:
        return prefetch_factor + 2  # each batch keeps every worker busy

    def busy(self, pending: list[int], turn: int, limit: int) -> bool:
        return max(pending) >= limit

    def batches_per_message(self, sizer: MessageSizer) -> int:
        return 1

    def shares(self, n: int, workers: int) -> int:
        return max(1, min(workers, n // MIN_SHARE))

    def submit(self, pool: WorkerPool, tasks: list[BatchTask], slabs: SlabPool, turn: int) -> int:
        for task in tasks:
            parts = self.shares(len(task.indices), pool.num_workers)
            for k in range(parts):
                share = (
                    task
                    if parts == 1
                    else BatchTask(
                        task.batch,
                        task.slab,
                        task.indices,
                        task.rng_seed,
                        part=k,
                        parts=parts,
                        split=self.code,
                    )
                )
                pool.submit(k, [share], slabs)
                pool.pending[k] += 1
        return turn


class SharedBlocks(Split):
    """Each batch shared among worker processes by storage block (block number modulo the
    workers; see :meth:`fastload.Dataset.block_numbers`): every worker gets every batch and
    fills the rows whose records lie in its blocks. For a compressed dataset, where whole
    batches have every worker decompress nearly every block (a block's records fall in
    batches that go to different workers) into a block cache that is a copy of the others':
    each worker decompresses only its own blocks, and the caches of all hold the dataset.
    The rows are not contiguous, so the consumer puts each share's listed fields in place."""

    code = 2
    name = "shared blocks"

    def busy(self, pending: list[int], turn: int, limit: int) -> bool:
        return max(pending) >= limit

    def shares(self, n: int, workers: int) -> int:
        return workers

    def submit(self, pool: WorkerPool, tasks: list[BatchTask], slabs: SlabPool, turn: int) -> int:
        parts = pool.num_workers
        for k in range(parts):
            shares = [
                BatchTask(
                    t.batch, t.slab, t.indices, t.rng_seed, part=k, parts=parts, split=self.code
                )
                for t in tasks
            ]
            pool.submit(k, shares, slabs)
            pool.pending[k] += 1
        return turn

    def fill(
        self, dataset: Readable, layout: BatchLayout, slab: np.ndarray, task: BatchTask, skip: bool
    ) -> BatchResult:
        share = (task.part, task.parts)
        rows, listed, timings = fill_block_share(dataset, layout, slab, task.indices, *share, skip)
        bad = timings.pop("bad", None)
        rows_listed = rows if listed else None
        return BatchResult(
            task.batch, task.slab, len(rows), listed, timings, None, *share, bad, rows_listed
        )

    def to_read(self, dataset: Readable, task: BatchTask) -> np.ndarray:
        return task.indices[block_share_rows(dataset, task.indices, task.part, task.parts)]

    def _joined(self, shares: list[BatchResult], n: int) -> dict[str, Any]:
        """The listed fields of a batch of ``n`` rows whose shares hold the rows ``r.rows``."""
        out: dict[str, Any] = {}
        for r in shares:
            if r.rows is None or r.listed is None:
                continue
            for name, values in r.listed.items():
                if isinstance(values, np.ndarray):
                    whole = out.setdefault(name, np.empty((n, *values.shape[1:]), values.dtype))
                    whole[r.rows] = values
                else:
                    whole = out.setdefault(name, [None] * n)
                    for row, value in zip(r.rows.tolist(), values):
                        whole[row] = value
        return out


WHOLE_BATCHES = Split()
SHARED_IMAGES = SharedImages()
SHARED_BLOCKS = SharedBlocks()
_BY_CODE = (WHOLE_BATCHES, SHARED_IMAGES, SHARED_BLOCKS)


def split_of(code: int) -> Split:
    """The strategy a task names by its code."""
    return _BY_CODE[code]


def choose_split(
    dataset: Readable,
    layout: BatchLayout,
    *,
    workers: int,
    worker_type: str,
    persistent: bool,
    batch_size: int,
) -> Split:
    """The one place the strategy is chosen. Batches of images decoded in the workers are
    shared out when each of several workers gets at least ``MIN_SHARE`` of them (a DALI
    field's images go end to end in the slab: not shared). A compressed dataset without
    images to decode or a transform is shared out by block among worker processes where its
    blocks would otherwise be decompressed more than once: once it outgrows one worker's
    block cache, every worker decompresses over and over what the caches of all would hold
    (100 MB of zstd tokens, 64 MiB caches, 2 workers: 7,000 samples/s whole, 336,000 shared
    out), and workers started afresh each epoch decompress it all each. A dataset that fits
    one cache, read by persistent workers, is decompressed once per worker and then read
    fastest whole (a share costs each worker a step per batch). So is a compressed dataset
    whose blocks are kept as decompressed copies on local disk (``Storage.copied``): each
    block is decompressed once by whichever worker meets it first, and every worker maps the
    copies (600 MB of zstd tokens, 2 workers, later epochs: 243,000 samples/s whole, 124,000
    shared out by block). Thread workers share one block cache already. Anything else: whole
    batches."""
    if layout.decode and not layout.dali and workers > 1 and batch_size >= 2 * MIN_SHARE:
        return SHARED_IMAGES
    if (
        workers >= 2
        and worker_type == "process"
        and not layout.decode
        and not layout.dali
        and layout.transform is None
        and any(
            s.compressed and not s.copied and (s.raw_bytes > s.block_cache or not persistent)
            for s in dataset.storage()
        )
    ):
        return SHARED_BLOCKS
    return WHOLE_BATCHES


def _summed(timings: list[dict | None]) -> dict[str, Any]:
    """Stage times, bytes and counters of several shares, summed (nested counters too)."""
    out: dict[str, Any] = {}
    for t in timings:
        for key, value in (t or {}).items():
            if isinstance(value, dict):
                counters = out.setdefault(key, {})
                for name, count in value.items():
                    counters[name] = counters.get(name, 0) + count
            else:
                out[key] = out.get(key, 0) + value
    return out
