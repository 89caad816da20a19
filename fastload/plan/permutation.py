"""A random-access shuffled order of [0, n): position -> index in O(1), with no per-sample array.

The order is the keyed bijection of the compiled core (``_core.permute``: a Feistel network with
cycle-walking, see csrc/core/permute.h), keyed from (seed, epoch) by :func:`derive_key`. The same
(n, seed, epoch) gives the same order on every run, process and machine.
"""

from __future__ import annotations

import struct
from typing import Protocol, Union

import numpy as np
import numpy.typing as npt

from .. import _core

__all__ = ["Order", "Permutation", "as_positions", "derive_key", "permute_grouped"]

_MASK64 = (1 << 64) - 1
_KEY_SALT = 0x6661_7374_6C6F_6164  # "fastload": keys differ from any other use of xxh64

# Streams: one per use of a key, so that no two orders derived from one seed are related.
STREAM_GLOBAL = 1
STREAM_BLOCKS = 2
STREAM_WINDOW = 3
STREAM_MIX_SLOTS = 4
STREAM_MIX_DATA = 5
STREAM_AUGMENT = 6  # the loader's per-batch augmentation seeds

IntArray = npt.NDArray[np.int64]
PositionsLike = Union[int, npt.ArrayLike]


def derive_key(seed: int, epoch: int, stream: int, *extra: int) -> int:
    """A 64-bit key for one order: XXH64 of the little-endian words (seed, epoch, stream, extra).

    ``seed`` is taken modulo 2**64 (as torch does), so negative seeds work.
    """
    for name, value in (("seed", seed), ("epoch", epoch)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    words = [int(seed) & _MASK64, int(epoch) & _MASK64, stream, *(int(e) & _MASK64 for e in extra)]
    return _core.xxh64(struct.pack(f"<{len(words)}Q", *words), _KEY_SALT)


def as_positions(positions: PositionsLike, n: int) -> tuple[IntArray, bool]:
    """``positions`` as a 1-D int64 array, and whether it was a scalar; IndexError unless all
    lie in [0, n)."""
    scalar = np.ndim(positions) == 0
    arr = np.atleast_1d(np.asarray(positions))
    if arr.ndim != 1:
        raise ValueError(f"positions must be a scalar or 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"positions must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise IndexError(f"position {bad} is out of range for an order of {n} samples")
    return arr, scalar


def permute_grouped(sizes: IntArray, keys: list[int], group: IntArray, local: IntArray) -> IntArray:
    """``out[i] = P_{group[i]}(local[i])`` where ``P_g`` is the bijection of [0, sizes[g]) keyed
    by ``keys[g]`` (groups numbered 0..len(keys)-1): one core call per group present."""
    if len(keys) == 1:  # the usual case: a batch within one window or stratum
        return _core.permute(int(sizes[0]), keys[0], local.astype(np.uint64)).view(np.int64)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(keys) + 1))
    out = np.empty(local.shape, dtype=np.int64)
    for g, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        if hi > lo:
            idx = order[lo:hi]
            out[idx] = _core.permute(int(sizes[g]), keys[g], local[idx].astype(np.uint64))
    return out


class Order(Protocol):
    """A bijection position -> dataset index over [0, n), random-access."""

    n: int

    def __getitem__(self, positions: PositionsLike) -> int | IntArray: ...


class Permutation:
    """The global order of one epoch: a keyed bijection of [0, n), or the identity when
    ``shuffle`` is False. ``perm[p]`` and ``perm[array]`` cost O(1) per position."""

    def __init__(self, n: int, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = int(n)
        self.shuffle = bool(shuffle)
        self.key = derive_key(seed, epoch, STREAM_GLOBAL)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, positions: PositionsLike) -> int | IntArray:
        pos, scalar = as_positions(positions, self.n)
        if self.shuffle and pos.size:
            pos = _core.permute(self.n, self.key, pos.astype(np.uint64)).view(np.int64)
        return int(pos[0]) if scalar else pos

    def inverse(self, indices: PositionsLike) -> int | IntArray:
        """The position of each dataset index in the order."""
        idx, scalar = as_positions(indices, self.n)
        if self.shuffle and idx.size:
            idx = _core.permute_inverse(self.n, self.key, idx.astype(np.uint64)).view(np.int64)
        return int(idx[0]) if scalar else idx

    def __repr__(self) -> str:
        return f"Permutation(n={self.n}, key={self.key:#x}, shuffle={self.shuffle})"
