"""The canonical DDP partition of an epoch's order into per-rank batches.

Positions [start, n) of the epoch's order are consumed in global steps of
``world_size * batch_size``; at step s, rank r's batch is positions
``start + (s * world_size + r) * batch_size + [0, batch_size)``. Because this depends only on
``start`` (the positions consumed so far), a job can resume with another world size, batch size
or worker count and continue exactly where the last one stopped.

The tail of R positions that does not fill a step (0 < R < world_size * batch_size):

- ``drop_last=True``: dropped, on every rank (each gets ``(n - start) // step`` batches).
- ``drop_last=False``: padded up to a multiple of ``world_size`` by repeating the first
  positions of the epoch's order (``padding`` < world_size of them) and split evenly: every
  rank's last batch holds ``ceil(R / world_size)`` positions. Every rank gets the same number
  of batches either way, since unequal counts hang DDP.

Workers of a rank take its batches round-robin (batch j -> worker j % num_workers) and the rank
yields them in order, so the worker count never changes which samples a rank sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .permutation import IntArray

__all__ = ["Partition"]


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class Partition:
    """Which positions of the epoch's order each rank's j-th batch holds (from ``start``)."""

    n: int
    batch_size: int
    world_size: int = 1
    drop_last: bool = False
    start: int = 0

    def __post_init__(self) -> None:
        _check_int("n", self.n, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("world_size", self.world_size, 1)
        _check_int("start", self.start, 0)
        if self.start > self.n:
            raise ValueError(f"start {self.start} is past the end of an epoch of {self.n}")

    @property
    def step(self) -> int:
        """Positions consumed by one batch on every rank."""
        return self.world_size * self.batch_size

    @property
    def full_steps(self) -> int:
        return (self.n - self.start) // self.step

    @property
    def tail(self) -> int:
        """Positions left after the full steps (dropped or padded)."""
        return self.n - self.start - self.full_steps * self.step

    @property
    def num_batches(self) -> int:
        """Batches per rank (the same on every rank)."""
        return self.full_steps + (1 if self.tail and not self.drop_last else 0)

    @property
    def last_batch_size(self) -> int:
        """Size of every rank's last batch (``batch_size`` unless a tail is padded)."""
        if self.tail and not self.drop_last:
            return -(-self.tail // self.world_size)
        return self.batch_size

    @property
    def padding(self) -> int:
        """Positions repeated (over all ranks) to even out the tail; < world_size."""
        if self.tail and not self.drop_last:
            return self.last_batch_size * self.world_size - self.tail
        return 0

    @property
    def dropped(self) -> int:
        """Positions never served (over all ranks) because drop_last dropped the tail."""
        return self.tail if self.drop_last else 0

    def positions(self, rank: int, j: int) -> IntArray:
        """Positions of the epoch's order in rank ``rank``'s ``j``-th batch (int64)."""
        if not 0 <= rank < self.world_size:
            raise IndexError(f"rank {rank} is out of range for world_size {self.world_size}")
        if not 0 <= j < self.num_batches:
            raise IndexError(f"batch {j} is out of range: this rank has {self.num_batches}")
        if j < self.full_steps:
            first = self.start + (j * self.world_size + rank) * self.batch_size
            return np.arange(first, first + self.batch_size, dtype=np.int64)
        size = self.last_batch_size
        first = self.start + j * self.step + rank * size
        pos = np.arange(first, first + size, dtype=np.int64)
        return pos % self.n  # padding wraps to the first positions of the epoch

    def first_position(self, rank: int, j: int) -> int:
        """The first position in rank ``rank``'s ``j``-th batch (as ``positions(rank, j)[0]``)."""
        if j < self.full_steps:
            return self.start + (j * self.world_size + rank) * self.batch_size
        return int(self.positions(rank, j)[0])

    def positions_of(self, rank: int, first: int, stop: int) -> IntArray:
        """The positions of rank ``rank``'s batches ``first`` to ``stop - 1``, one row per
        batch (all full steps: ``stop <= full_steps``), shape ``(stop - first, batch_size)``."""
        if not (0 <= rank < self.world_size and 0 <= first <= stop <= self.full_steps):
            raise IndexError(
                f"batches {first}..{stop} of rank {rank} are not all full steps "
                f"({self.full_steps} of {self.world_size} ranks)"
            )
        js = np.arange(first, stop, dtype=np.int64)
        starts = self.start + (js * self.world_size + rank) * self.batch_size
        return starts[:, None] + np.arange(self.batch_size, dtype=np.int64)

    def consumed_after(self, batches: int) -> int:
        """Positions consumed once every rank has yielded ``batches`` batches from ``start``:
        what to save to resume. After the last batch it is ``n`` (the epoch is over, even if
        drop_last dropped a tail)."""
        _check_int("batches", batches, 0)
        if batches >= self.num_batches:
            return self.n
        return self.start + batches * self.step

    @staticmethod
    def worker_batches(num_batches: int, worker: int, num_workers: int) -> range:
        """The batches (by index j) that worker ``worker`` of ``num_workers`` builds."""
        _check_int("num_workers", num_workers, 1)
        if not 0 <= worker < num_workers:
            raise IndexError(f"worker {worker} is out of range for num_workers {num_workers}")
        return range(worker, num_batches, num_workers)
