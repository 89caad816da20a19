"""A block-aware shuffled order for compressed or remote data, where reading one record costs
reading (and decompressing) its whole block.

Records are numbered block by block (block i holds the next ``block_sizes[i]`` records). The
order (1) permutes the blocks with a keyed bijection, then (2) cuts that block sequence into
windows of ``window`` consecutive blocks and shuffles the records inside each window with a
keyed bijection of its own. So ``window`` consecutive blocks' worth of positions come from at
most ``window`` blocks (2 windows' worth of blocks for a span crossing a window edge): a reader
that keeps the current window's blocks decoded reads each block once per epoch.

Memory is O(#blocks) (two int64 arrays; a third while building), never O(#records). Position ->
record is random access (two binary searches, two keyed bijections), so resuming is O(1).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .. import _core
from .permutation import (
    STREAM_BLOCKS,
    STREAM_WINDOW,
    IntArray,
    PositionsLike,
    as_positions,
    derive_key,
    permute_grouped,
)

__all__ = ["BlockShuffle", "layout_digest"]

DEFAULT_WINDOW = 16


def layout_digest(block_sizes: npt.ArrayLike) -> str:
    """A short hex digest of a block layout, saved with a plan's state to detect a changed one."""
    sizes = np.ascontiguousarray(block_sizes, dtype="<i8")
    return f"{_core.xxh64(sizes):016x}"


class BlockShuffle:
    """Position -> record index for one epoch, shuffled by block and within windows of blocks.

    ``shuffle=False`` gives the identity (records in storage order).
    """

    def __init__(
        self,
        block_sizes: npt.ArrayLike,
        seed: int = 0,
        epoch: int = 0,
        *,
        window: int = DEFAULT_WINDOW,
        shuffle: bool = True,
    ) -> None:
        sizes = np.asarray(block_sizes)
        if sizes.ndim != 1 or (sizes.size and not np.issubdtype(sizes.dtype, np.integer)):
            raise TypeError(
                f"block_sizes must be a 1-D integer array, got {sizes.dtype} "
                f"with shape {sizes.shape}"
            )
        sizes = sizes.astype(np.int64, copy=False)
        if sizes.size and sizes.min() < 0:
            raise ValueError(f"block {int(np.argmin(sizes))} has a negative size")
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be an int >= 1 (blocks), got {window!r}")
        self.num_blocks = int(sizes.size)
        self.window = int(window)
        self.shuffle = bool(shuffle)
        self._seed, self._epoch = seed, epoch
        self._block_key = derive_key(seed, epoch, STREAM_BLOCKS)
        if not self.shuffle:
            self.n = int(sizes.sum())
            return
        # Built in place, so the peak is the two arrays kept plus the block permutation.
        #: first position of each block in shuffled block order, plus the end (= n)
        self._pos_start = np.zeros(self.num_blocks + 1, dtype=np.int64)
        if self.num_blocks:
            perm = _core.permute_range(self.num_blocks, self._block_key, 0, self.num_blocks)
            np.take(sizes, perm.view(np.int64), out=self._pos_start[1:])
            del perm
        np.cumsum(self._pos_start[1:], out=self._pos_start[1:])
        self.n = int(self._pos_start[-1])
        #: first record of each block, in storage order
        self._record_start = np.cumsum(sizes)
        self._record_start -= sizes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, positions: PositionsLike) -> int | IntArray:
        pos, scalar = as_positions(positions, self.n)
        if self.shuffle and pos.size:
            pos = self._lookup(pos)
        return int(pos[0]) if scalar else pos

    def _lookup(self, pos: IntArray) -> IntArray:
        # (1) the window holding each position, and where it starts and ends
        block = np.searchsorted(self._pos_start, pos, side="right") - 1
        uniq, group = np.unique(block // self.window, return_inverse=True)
        first = self._pos_start[uniq * self.window]
        sizes = self._pos_start[np.minimum((uniq + 1) * self.window, self.num_blocks)] - first
        # (2) shuffle within the window; windows are few per batch, so their keys are cheap
        keys = [derive_key(self._seed, self._epoch, STREAM_WINDOW, w) for w in uniq.tolist()]
        win_start = first[group]
        shuffled = win_start + permute_grouped(sizes, keys, group, pos - win_start)
        # (3) the shuffled position's block, and the record at that offset in its stored copy
        block = np.searchsorted(self._pos_start, shuffled, side="right") - 1
        stored = _core.permute(self.num_blocks, self._block_key, block.astype(np.uint64))
        return self._record_start[stored.view(np.int64)] + (shuffled - self._pos_start[block])

    def __repr__(self) -> str:
        return (
            f"BlockShuffle(n={self.n}, blocks={self.num_blocks}, window={self.window}, "
            f"shuffle={self.shuffle})"
        )
