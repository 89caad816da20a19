"""The epoch's batches of dataset indices, as the consumer draws them: torch's samplers (the
common ones read in one go), checked against the slab size, with read-ahead hints for a
remote dataset."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from ..read.contract import Readable

__all__ = ["eager_batches", "checked", "hinting", "declared_batch_size", "batch_len"]


MAX_EAGER_ORDER = 1 << 24  # indices eager_batches draws at once (8 bytes each)


def eager_batches(batch_sampler: Any) -> Iterator[Any]:
    """``batch_sampler``'s batches. For torch's own BatchSampler over a SequentialSampler or a
    RandomSampler without replacement, the same batches are slices of the sampler's whole
    order, drawn at the epoch's first batch: its loop over single indices cost ~10 us per
    batch of 16, a fifth of the consumer's work per token batch. The sampler uses its
    generator exactly as when iterated lazily (the same draws, in the same order; a draw
    torch makes at the epoch's end happens at its start instead)."""
    sampler = getattr(batch_sampler, "sampler", None)
    plain = type(sampler) is SequentialSampler or (
        type(sampler) is RandomSampler and not sampler.replacement
    )
    if (
        type(batch_sampler) is not BatchSampler
        or sampler is None
        or not plain
        or len(sampler) > MAX_EAGER_ORDER
    ):
        yield from batch_sampler
        return
    order = np.fromiter(iter(sampler), np.int64)
    size = batch_sampler.batch_size
    end = len(order) - len(order) % size if batch_sampler.drop_last else len(order)
    for start in range(0, end, size):
        yield order[start : start + size]


def checked(batches: Iterator[Any], capacity: int) -> Iterator[np.ndarray]:
    """``batches`` as int64 arrays; one larger than ``capacity`` (what the slabs hold) is an
    error naming the fix."""
    for batch in batches:
        indices = np.asarray(batch, dtype=np.int64)
        if len(indices) > capacity:
            raise ValueError(
                f"batch_sampler yielded a batch of {len(indices)} indices, more than its "
                f"batch_size attribute says ({capacity}), which sizes the loader's batch "
                "buffers; give it its largest batch size, or no batch_size attribute at "
                "all (each epoch's batches are then listed first)"
            )
        yield indices


def hinting(dataset: Readable, plan: Iterator[np.ndarray], ahead: int = 2) -> Iterator[np.ndarray]:
    """``plan``'s batches; for a remote dataset, each yielded while the blocks of the next
    ``ahead`` are already being fetched (in the dataset's background threads), as workers do
    for their queued batches. Local datasets: ``plan`` itself."""
    if not dataset.remote:
        yield from plan
        return
    queued: deque = deque()
    for indices in plan:
        queued.append(indices)
        dataset.prefetch(indices)  # in plan order: the batch needed first is fetched first
        if len(queued) > ahead:
            yield queued.popleft()
    yield from queued


def declared_batch_size(batch_sampler: Any) -> int | None:
    size = getattr(batch_sampler, "batch_size", None)
    return size if isinstance(size, int) and size > 0 else None


def batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, Mapping):
        batch = next(iter(batch.values()), ())
    elif isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    try:
        return len(batch)
    except TypeError:
        return 1
