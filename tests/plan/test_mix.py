"""Mix: weighted, stratified, random-access mixing of several datasets."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastload.plan import EpochPlan
from fastload.plan import MixOrder as Mix


def test_proportions_exact_at_stratum_ends_and_close_everywhere():
    mix = Mix([10**6, 10**6, 10**6], [0.5, 0.3, 0.2], seed=1, length=50_000)
    ds, _ = mix[np.arange(mix.length)]
    for p in [*range(mix.stratum, mix.length, mix.stratum), mix.length]:
        counts = np.bincount(ds[:p], minlength=3)
        assert counts.tolist() == mix.drawn(p)
        assert np.all(np.abs(counts - p * np.array(mix.weights)) <= 1), p  # ceil(log2 3) / 2
    # any batch of 256 is a mixture close to the weights (hypergeometric spread)
    for start in range(0, mix.length - 256, 4999):
        share = np.bincount(ds[start : start + 256], minlength=3) / 256
        assert np.all(np.abs(share - mix.weights) < 0.15)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    weights=st.lists(st.floats(1e-6, 1e6), min_size=1, max_size=9),
    p=st.integers(0, 10**15),
)
def test_draw_counts_are_monotone_and_close(weights, p):
    mix = Mix([1] * len(weights), weights)
    now, nxt = mix.drawn(p), mix.drawn(p + 1)
    assert sum(now) == p and sum(nxt) == p + 1
    assert sum(b - a for a, b in zip(now, nxt)) == 1 and all(b >= a for a, b in zip(now, nxt))
    bound = math.ceil(math.log2(len(weights))) / 2 if len(weights) > 1 else 0
    assert all(abs(c - p * w) <= bound + 1e-9 * p for c, w in zip(now, mix.weights))


def test_default_weights_read_every_sample_exactly_once():
    sizes = [1000, 37, 5000, 1]
    mix = Mix(sizes, seed=3)
    ds, idx = mix[np.arange(mix.length)]
    for d, n in enumerate(sizes):
        assert np.array_equal(np.sort(idx[ds == d]), np.arange(n))


def test_each_dataset_read_evenly_and_wraps_with_a_fresh_order():
    mix = Mix([20_000, 50], [0.5, 0.5], seed=4)  # the small one is drawn ~200 times over
    ds, idx = mix[np.arange(mix.length)]
    small = idx[ds == 1]
    # draws k -> pass k // 50: every index is drawn once per pass, so all within one of another
    counts = np.bincount(small, minlength=50)
    assert counts.max() - counts.min() <= 1 and counts.sum() == small.size
    big = idx[ds == 0]
    assert np.unique(big).size == big.size  # the big one is only partly read: no repeats
    assert mix.length == 20_050
    # each pass is its own permutation: the draws' order differs from pass to pass
    first_two = Mix([20_000, 50], [0.5, 0.5], seed=4)._index(np.ones(100, np.int64), np.arange(100))
    assert np.array_equal(np.sort(first_two[:50]), np.arange(50))
    assert not np.array_equal(first_two[:50], first_two[50:])


def test_deterministic_random_access_and_keyed():
    mix = Mix([300, 700], [0.7, 0.3], seed=2, epoch=1)
    ds, idx = mix[np.arange(1000)]
    again = Mix([300, 700], [0.7, 0.3], seed=2, epoch=1)
    for p in (0, 17, 999):
        d, i = again[p]
        assert (d[0], i[0]) == (ds[p], idx[p])
    other_ds, other_idx = Mix([300, 700], [0.7, 0.3], seed=2, epoch=2)[np.arange(1000)]
    assert not (np.array_equal(other_ds, ds) and np.array_equal(other_idx, idx))
    plain = Mix([300, 700], [0.7, 0.3], seed=2, epoch=1, shuffle=False, stratum=100)
    plain_ds, plain_idx = plain[np.arange(1000)]
    assert plain_ds[:100].tolist() == [0] * 70 + [1] * 30  # each stratum, dataset by dataset
    assert plain_idx[:72].tolist() == list(range(70)) + [0, 1]


def test_resumable_through_an_epoch_plan():
    mix = Mix([400, 250], [0.6, 0.4], seed=7)

    def served(ranks, first=0):
        out = []
        for j in range(first, ranks[0].num_batches):
            for plan in ranks:
                d, i = mix[plan.batch(j)]
                out += list(zip(d.tolist(), i.tolist()))
        return out

    old = [EpochPlan(len(mix), batch_size=8, shuffle=False, rank=r, world_size=4) for r in range(4)]
    state = old[0].state_dict(5)
    new = [
        EpochPlan.from_state_dict(state, n=len(mix), batch_size=8, rank=r, world_size=3)
        for r in range(3)
    ]
    before = served(old)[: 5 * 4 * 8]
    got = Counter(before) + Counter(served(new))
    full = Counter(served([EpochPlan(len(mix), batch_size=8, shuffle=False, rank=0, world_size=1)]))
    pad = new[0].padding
    assert sum(got.values()) == sum(full.values()) + pad
    assert got - full == Counter(list(zip(*[a.tolist() for a in mix[np.arange(pad)]])))


def test_tiny_weights_still_get_their_share():
    mix = Mix([1000, 10], [1.0, 1e-4], seed=0, length=10**5)
    ds, _ = mix[np.arange(mix.length)]
    assert np.bincount(ds, minlength=2)[1] == mix.drawn(mix.length)[1] == 10


def test_bad_arguments():
    with pytest.raises(ValueError, match="one weight per dataset"):
        Mix([1, 2], [1.0])
    with pytest.raises(ValueError, match="one weight per dataset"):
        Mix([], [])
    with pytest.raises(ValueError, match="at least one sample"):
        Mix([0, 2], [1, 1])
    with pytest.raises(ValueError, match="finite and > 0"):
        Mix([1, 2], [1, 0])
    with pytest.raises(ValueError, match="finite and > 0"):
        Mix([1, 2], [1, float("nan")])
    with pytest.raises(ValueError, match="stratum"):
        Mix([1, 2], [1, 1], stratum=0)
    with pytest.raises(IndexError):
        Mix([1, 2], [1, 1])[3]


def test_block_order_reads_every_sample_once_in_few_blocks_per_stratum():
    """With blocks=, each pass over a dataset is a BlockShuffle of its blocks: the default
    weights still read every sample once, and a stratum's draws of one dataset (consecutive
    positions of its block order) come from the blocks of the windows they span."""
    sizes, per_block, window = [6000, 1500], [60, 25], 4
    blocks = [np.full(n // b, b) for n, b in zip(sizes, per_block)]
    mix = Mix(sizes, seed=5, blocks=blocks, window=window, stratum=512)
    ds, idx = mix[np.arange(mix.length)]
    for d, n in enumerate(sizes):
        assert np.array_equal(np.sort(idx[ds == d]), np.arange(n))
    for start in range(0, mix.length, 512):
        for d in (0, 1):
            mine = idx[start : start + 512][ds[start : start + 512] == d]
            windows = math.ceil(len(mine) / (window * per_block[d])) + 1
            assert len(np.unique(mine // per_block[d])) <= windows * window
    plain = Mix(sizes, seed=5, stratum=512)[np.arange(512)]
    assert len(np.unique(plain[1][plain[0] == 0] // 60)) > 2 * window  # global: all over
    again = Mix(sizes, seed=5, blocks=blocks, window=window, stratum=512)[np.arange(300, 900)]
    assert np.array_equal(again[1], idx[300:900])  # random access: the same draws


def test_block_order_wraps_with_a_fresh_block_order_per_pass():
    blocks = [np.full(100, 50), np.full(2, 10)]  # the small one: 20 samples, ~250 passes
    mix = Mix([5000, 20], [0.5, 0.5], seed=1, blocks=blocks, window=1)
    ds, idx = mix[np.arange(mix.length)]
    counts = np.bincount(idx[ds == 1], minlength=20)
    assert counts.max() - counts.min() <= 1
    small = mix._index(np.ones(400, np.int64), np.arange(400))  # its draws, in draw order
    passes = [tuple(small[k : k + 20]) for k in range(0, 400, 20)]
    assert len(set(passes)) > 1  # not one order repeated
    for p in passes:  # window=1: a pass reads one block, then the other
        assert len(set(i // 10 for i in p[:10])) == 1


def test_block_order_needs_blocks_that_match_the_sizes():
    with pytest.raises(ValueError, match="blocks of each"):
        Mix([10, 10], blocks=[[10]])
    with pytest.raises(ValueError, match="dataset 1: its blocks hold 9 records"):
        Mix([10, 10], blocks=[[10], [4, 5]])
