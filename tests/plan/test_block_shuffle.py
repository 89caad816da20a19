"""BlockShuffle: a permutation that reads blocks whole and stays within a window of them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastload.plan import BlockShuffle


def block_ids(sizes, records: np.ndarray) -> np.ndarray:
    """Storage block of each record index."""
    ends = np.cumsum(sizes)
    return np.searchsorted(ends, records, side="right")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=0, max_size=60),
    window=st.integers(1, 8),
    seed=st.integers(0, 2**64 - 1),
)
def test_is_a_permutation_for_any_layout(sizes, window, seed):
    bs = BlockShuffle(sizes, seed, window=window)
    n = sum(sizes)
    assert bs.n == len(bs) == n
    order = bs[np.arange(n)]
    assert np.array_equal(np.sort(order), np.arange(n))
    # random access agrees with the whole-epoch lookup, position by position
    if n:
        p = n // 2
        assert bs[p] == order[p]


def test_uniform_blocks_each_window_reads_exactly_window_blocks():
    size, window, blocks = 100, 4, 50
    sizes = np.full(blocks, size)
    bs = BlockShuffle(sizes, seed=3, window=window)
    ids = block_ids(sizes, bs[np.arange(bs.n)])
    span = size * window
    for w in range(blocks // window + 1):
        chunk = ids[w * span : (w + 1) * span]
        if chunk.size:
            assert np.unique(chunk).size == -(-chunk.size // size)  # whole blocks, no more
    # within a window the records are mixed, not block after block
    same_block_neighbours = np.mean(ids[1:] == ids[:-1])
    assert same_block_neighbours < 2 / window
    # and the blocks come in a shuffled order
    first_seen = ids[np.sort(np.unique(ids, return_index=True)[1])]
    assert not np.array_equal(first_seen, np.arange(blocks))


def test_uneven_blocks_stay_within_their_window():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 200, 300)
    window = 5
    bs = BlockShuffle(sizes, seed=8, window=window)
    ids = block_ids(sizes, bs[np.arange(bs.n)])
    # every block's records sit within one window's span of positions
    positions = np.arange(bs.n)
    lo = np.full(sizes.size, bs.n)
    hi = np.zeros(sizes.size, dtype=np.int64)
    np.minimum.at(lo, ids, positions)
    np.maximum.at(hi, ids, positions)
    assert np.all(hi - lo < window * sizes.max())
    # so any batch touches at most two windows' worth of blocks
    for start in range(0, bs.n - 256, 97):
        assert np.unique(ids[start : start + 256]).size <= 2 * window


def test_deterministic_and_keyed_by_seed_and_epoch():
    sizes = np.full(64, 32)
    base = BlockShuffle(sizes, 1, 0, window=4)[np.arange(2048)]
    assert np.array_equal(base, BlockShuffle(sizes, 1, 0, window=4)[np.arange(2048)])
    assert not np.array_equal(base, BlockShuffle(sizes, 2, 0, window=4)[np.arange(2048)])
    assert not np.array_equal(base, BlockShuffle(sizes, 1, 1, window=4)[np.arange(2048)])


def test_no_shuffle_is_storage_order():
    bs = BlockShuffle([3, 0, 4], seed=5, shuffle=False)
    assert bs[np.arange(7)].tolist() == list(range(7)) and bs[6] == 6


def test_bad_layouts():
    with pytest.raises(ValueError, match="block 1 has a negative size"):
        BlockShuffle([3, -1])
    with pytest.raises(TypeError, match="1-D integer"):
        BlockShuffle([1.5, 2.0])
    with pytest.raises(TypeError, match="1-D integer"):
        BlockShuffle([[1, 2]])
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        BlockShuffle([3], window=0)
    with pytest.raises(IndexError):
        BlockShuffle([3, 4])[7]
