"""Weighted mixing of several datasets: global position -> (dataset id, index), random access.

Semantics:

- Among the first P positions, dataset d is drawn ``T_d(P)`` times, where T_d is within
  ``ceil(log2(#datasets)) / 2`` of ``P * weight_d`` (weights normalised) and never decreases in
  P: the count of a parent group of datasets is split between its two halves by rounding, down a
  balanced tree, in exact integer arithmetic. With ``weights=None`` the weights are the sizes, and
  an epoch of ``sum(sizes)`` positions draws every sample of every dataset exactly once.
- Positions are cut into strata of ``stratum`` positions (the last may be shorter). A stratum
  holds ``T_d(end) - T_d(start)`` draws of dataset d, at positions shuffled by a keyed bijection,
  so batches are mixed, not striped. With ``shuffle=False`` nothing is shuffled: a stratum lists
  its draws dataset by dataset, and each dataset is read in storage order.
- Dataset d's k-th draw reads index ``P_{d,pass}(k mod n_d)`` with ``pass = k // n_d``: each pass
  over a dataset is a fresh keyed permutation of it (the identity when ``shuffle`` is False;
  with ``blocks=``, a :class:`~fastload.plan.BlockShuffle` of its blocks, so a stratum's draws
  of one dataset come from a window or two of its blocks, each read once per pass),
  so a dataset drawn more often than its size wraps around and starts a new pass; one drawn
  less often is only partly read, never repeating an index. Draws are numbered in order of
  stratum, but in shuffled order inside one (that keeps lookups O(1)): a dataset smaller than
  its draws per stratum may repeat an index before every index of the pass has appeared,
  though over whole strata each index is drawn once per pass.
- An epoch is ``length`` positions, by default the sum of the sizes. To shard and resume it,
  build an :class:`~fastload.plan.EpochPlan` over ``length`` positions with ``shuffle=False``
  (the mix is already shuffled) and map each batch of positions through the mix.

Everything is keyed from (seed, epoch): the same on every run, and O(#datasets) memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from itertools import accumulate

import numpy as np
import numpy.typing as npt

from .block_shuffle import DEFAULT_WINDOW, BlockShuffle
from .permutation import (
    STREAM_MIX_DATA,
    STREAM_MIX_SLOTS,
    IntArray,
    PositionsLike,
    as_positions,
    derive_key,
    permute_grouped,
)

__all__ = ["MixOrder"]


def _integer_weights(weights: Sequence[float]) -> list[int]:
    """Positive weights as integers in the same proportions, exactly (floats are dyadic)."""
    fracs = [Fraction(w) for w in weights]
    den = math.lcm(*(f.denominator for f in fracs))
    return [int(f * den) for f in fracs]


class MixOrder:
    """One epoch's draws from ``len(sizes)`` datasets in proportion to ``weights`` (default:
    the sizes): position -> (dataset, record). :class:`fastload.Mix` makes one per epoch."""

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        *,
        epoch: int = 0,
        length: int | None = None,
        shuffle: bool = True,
        stratum: int = 4096,
        blocks: Sequence[npt.ArrayLike] | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        weights = list(sizes) if weights is None else list(weights)
        if len(sizes) == 0 or len(sizes) != len(weights):
            raise ValueError(
                f"need one weight per dataset, got {len(sizes)} sizes and {len(weights)} weights"
            )
        if any(int(s) < 1 for s in sizes):
            raise ValueError(f"every dataset needs at least one sample, sizes = {list(sizes)}")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights must be finite and > 0, got {weights}")
        if stratum < 1:
            raise ValueError(f"stratum must be >= 1, got {stratum}")
        self.sizes = [int(s) for s in sizes]
        self._w = _integer_weights(weights)
        self._cum = [0, *accumulate(self._w)]  # Python ints: exact at any size
        self.weights = [w / self._cum[-1] for w in self._w]
        self.stratum = int(stratum)
        self.length = sum(self.sizes) if length is None else int(length)
        if self.length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.seed, self.epoch, self.shuffle = seed, epoch, bool(shuffle)
        derive_key(seed, epoch, STREAM_MIX_SLOTS)  # validates seed and epoch now
        self.window = int(window)
        self._blocks: list[np.ndarray] | None = None
        if blocks is not None:
            if len(blocks) != len(self.sizes):
                raise ValueError(
                    f"need the blocks of each of the {len(self.sizes)} datasets, got {len(blocks)}"
                )
            self._blocks = [np.asarray(b, dtype=np.int64) for b in blocks]
            for d, b in enumerate(self._blocks):
                if int(b.sum()) != self.sizes[d]:
                    raise ValueError(
                        f"dataset {d}: its blocks hold {int(b.sum())} records, "
                        f"its size is {self.sizes[d]}"
                    )
        # (dataset, pass) -> its BlockShuffle: O(#blocks) to build, so kept for a few passes
        self._passes: dict[tuple[int, int], BlockShuffle] = {}

    def __len__(self) -> int:
        return self.length

    def drawn(self, p: int) -> list[int]:
        """How many times each dataset is drawn in positions [0, p)."""
        out = [0] * len(self.sizes)
        self._split(p, 0, len(out), out)
        return out

    def _split(self, count: int, lo: int, hi: int, out: list[int]) -> None:
        # count draws of datasets [lo, hi) -> their halves, rounding to nearest (ties up):
        # monotone in count with steps of 0 or 1, so every T_d is too
        if hi - lo == 1:
            out[lo] = count
            return
        mid = (lo + hi) // 2
        w_left, w_all = self._cum[mid] - self._cum[lo], self._cum[hi] - self._cum[lo]
        left = (2 * count * w_left + w_all) // (2 * w_all)
        self._split(left, lo, mid, out)
        self._split(count - left, mid, hi, out)

    def __getitem__(self, positions: PositionsLike) -> tuple[IntArray, IntArray]:
        """(dataset id, index in that dataset) for each position (arrays, even for a scalar)."""
        pos, _ = as_positions(positions, self.length)
        k = len(self.sizes)
        strata, group = np.unique(pos // self.stratum, return_inverse=True)
        # per stratum: where each dataset's slots begin, and its draws before the stratum
        slot_start = np.empty((strata.size, k + 1), dtype=np.int64)
        before = np.empty((strata.size, k), dtype=np.int64)
        sizes = np.empty(strata.size, dtype=np.int64)
        for i, s in enumerate(strata.tolist()):
            lo, hi = s * self.stratum, min((s + 1) * self.stratum, self.length)
            before[i] = self.drawn(lo)
            slot_start[i, 0] = 0
            np.cumsum(np.subtract(self.drawn(hi), before[i]), out=slot_start[i, 1:])
            sizes[i] = hi - lo
        slot = pos % self.stratum
        if self.shuffle:
            keys = [derive_key(self.seed, self.epoch, STREAM_MIX_SLOTS, s) for s in strata.tolist()]
            slot = permute_grouped(sizes, keys, group, slot)
        starts = slot_start[group]
        dataset = (starts <= slot[:, None]).sum(axis=1) - 1  # last d with a start <= slot
        # a dataset with no slot here has an empty range; the count above skips past it
        draw = before[group, dataset] + slot - starts[np.arange(pos.size), dataset]
        return dataset.astype(np.int64), self._index(dataset, draw)

    def _index(self, dataset: IntArray, draw: IntArray) -> IntArray:
        n = np.asarray(self.sizes, dtype=np.int64)[dataset]
        local = draw % n
        if not self.shuffle:
            return local
        # one permutation per (dataset, pass) pair present: usually one per dataset
        passes = draw // n
        pairs, group = np.unique(np.stack([dataset, passes], axis=1), axis=0, return_inverse=True)
        group = group.reshape(-1)
        pairs = pairs.tolist()
        keys = [derive_key(self.seed, self.epoch, STREAM_MIX_DATA, d, p) for d, p in pairs]
        if self._blocks is not None:
            out = np.empty_like(local)
            for g, ((d, p), key) in enumerate(zip(pairs, keys)):
                mine = group == g
                out[mine] = self._block_order(self._blocks[d], d, p, key)[local[mine]]
            return out
        sizes = np.asarray([self.sizes[d] for d, _ in pairs], dtype=np.int64)
        return permute_grouped(sizes, keys, group, local)

    def _block_order(self, blocks: np.ndarray, d: int, p: int, key: int) -> BlockShuffle:
        """Pass ``p`` over dataset ``d`` (of block sizes ``blocks``) in block order, keyed by
        its (dataset, pass) key."""
        order = self._passes.get((d, p))
        if order is None:
            if len(self._passes) >= 2 * len(self.sizes) + 8:
                self._passes.pop(next(iter(self._passes)))  # the oldest
            order = self._passes[d, p] = BlockShuffle(blocks, key, 0, window=self.window)
        return order

    def __repr__(self) -> str:
        blocks = f", window={self.window}" if self._blocks is not None else ""
        return (
            f"MixOrder(sizes={self.sizes}, weights={[round(w, 4) for w in self.weights]}, "
            f"length={self.length}, stratum={self.stratum}{blocks})"
        )
