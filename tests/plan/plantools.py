"""Helpers shared by the plan tests: run a whole epoch over every rank, resume it elsewhere."""

from __future__ import annotations

from collections import Counter

import numpy as np

from fastload.plan import EpochPlan, Partition


def served_positions(part: Partition, first: int = 0, stop: int | None = None) -> np.ndarray:
    """Positions served by every rank for batches [first, stop), in global step order."""
    stop = part.num_batches if stop is None else stop
    chunks = [part.positions(r, j) for j in range(first, stop) for r in range(part.world_size)]
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)


def expected_positions(n: int, tail_plan: Partition) -> Counter:
    """Every position once, minus what ``tail_plan`` (the plan that serves the end of the
    epoch) drops, plus what it pads."""
    want = Counter(range(n - tail_plan.dropped))
    want.update((np.arange(tail_plan.padding) % n).tolist())
    return want


def plans(n: int, world: int, **kwargs) -> list:
    return [EpochPlan(n, rank=r, world_size=world, **kwargs) for r in range(world)]


def served_indices(ranks: list, first: int = 0, stop: int | None = None) -> np.ndarray:
    """Dataset indices served by every rank's plan for batches [first, stop), step by step."""
    stop = ranks[0].num_batches if stop is None else stop
    chunks = [p.batch(j) for j in range(first, stop) for p in ranks]
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
