"""Partition: the canonical DDP split (docs/reliability.md E5-E7: exactly once, equal batch
counts)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastload.plan import Partition

from .plantools import expected_positions, served_positions

WORLDS = [1, 2, 3, 4, 8]
BATCHES = [1, 3, 4, 7]
SIZES = [0, 1, 2, 5, 7, 31, 32, 33, 100, 257, 1000]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_position_once_with_documented_pad_or_drop(world, drop_last):
    for batch in BATCHES:
        for n in SIZES:
            part = Partition(n, batch, world, drop_last)
            got = Counter(served_positions(part).tolist())
            assert got == expected_positions(n, part), (n, batch, world)
            step = world * batch
            tail = n % step
            if drop_last:
                assert part.num_batches == n // step and part.dropped == tail
                assert part.padding == 0
            else:
                assert part.num_batches == -(-n // step) and part.dropped == 0
                assert 0 <= part.padding < world
                assert part.padding == (-(-tail // world) * world - tail if tail else 0)
            # every rank: the same number of batches; all full but a padded last one
            for r in range(world):
                sizes = [part.positions(r, j).size for j in range(part.num_batches)]
                assert len(sizes) == part.num_batches
                assert all(s == batch for s in sizes[: part.full_steps])
                if part.num_batches > part.full_steps:
                    assert sizes[-1] == -(-tail // world) == part.last_batch_size


def test_layout_of_steps_and_padding():
    part = Partition(10, batch_size=2, world_size=4)  # one full step of 8, then 2 left
    assert [[part.positions(r, j).tolist() for j in range(2)] for r in range(4)] == [
        [[0, 1], [8]],
        [[2, 3], [9]],
        [[4, 5], [0]],  # padding repeats the first positions of the epoch's order
        [[6, 7], [1]],
    ]
    assert part.padding == 2 and part.last_batch_size == 1


def test_fewer_samples_than_ranks():
    part = Partition(1, batch_size=4, world_size=8)
    assert part.num_batches == 1 and part.padding == 7
    assert [part.positions(r, 0).tolist() for r in range(8)] == [[0]] * 8
    assert Partition(3, 4, 8, drop_last=True).num_batches == 0
    assert Partition(3, 4, 8, drop_last=True).dropped == 3


def test_start_shifts_the_partition():
    part = Partition(20, batch_size=2, world_size=2, start=6)
    assert part.positions(0, 0).tolist() == [6, 7] and part.positions(1, 0).tolist() == [8, 9]
    assert part.num_batches == 4 and part.consumed_after(1) == 10
    assert Partition(20, 2, 2, start=20).num_batches == 0


def test_consumed_after():
    part = Partition(10, batch_size=2, world_size=4, drop_last=True)
    assert [part.consumed_after(j) for j in range(3)] == [0, 10, 10]  # the end reads as n
    part = Partition(10, batch_size=2, world_size=4)
    assert [part.consumed_after(j) for j in range(4)] == [0, 8, 10, 10]


def test_workers_take_batches_round_robin():
    for num_workers in (1, 2, 3, 5):
        ranges = [Partition.worker_batches(10, w, num_workers) for w in range(num_workers)]
        assert sorted(j for r in ranges for j in r) == list(range(10))
        assert all(j % num_workers == w for w, r in enumerate(ranges) for j in r)
    with pytest.raises(IndexError):
        Partition.worker_batches(10, 3, 3)


def test_bad_arguments():
    for kwargs in (
        {"n": -1},
        {"batch_size": 0},
        {"world_size": 0},
        {"start": 11},
        {"batch_size": True},
        {"start": -1},
    ):
        args = {"n": 10, "batch_size": 2, **kwargs}
        with pytest.raises(ValueError):
            Partition(**args)
    part = Partition(10, 2, 2)
    with pytest.raises(IndexError, match="rank 2"):
        part.positions(2, 0)
    with pytest.raises(IndexError, match="batch 3"):
        part.positions(0, 3)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    n=st.integers(0, 3000),
    world=st.sampled_from(WORLDS),
    batch=st.integers(1, 64),
    drop_last=st.booleans(),
    new_world=st.sampled_from(WORLDS),
    new_batch=st.integers(1, 64),
    data=st.data(),
)
def test_resume_anywhere_with_any_topology(n, world, batch, drop_last, new_world, new_batch, data):
    first = Partition(n, batch, world, drop_last)
    k = data.draw(st.integers(0, first.num_batches), label="batches before saving")
    consumed = first.consumed_after(k)
    before = served_positions(first, 0, k)
    if k < first.num_batches:  # mid-epoch, the positions served are exactly [0, consumed)
        assert np.array_equal(before, np.arange(consumed))
    second = Partition(n, new_batch, new_world, drop_last, start=consumed)
    after = served_positions(second)
    tail_plan = first if k == first.num_batches else second
    assert Counter(before.tolist()) + Counter(after.tolist()) == expected_positions(n, tail_plan)


def test_positions_of_full_steps_only():
    p = Partition(n=23, batch_size=4, world_size=2, start=3)  # 2 full steps of 8, a tail of 4
    assert p.positions_of(1, 0, 2).tolist() == [
        p.positions(1, 0).tolist(),
        p.positions(1, 1).tolist(),
    ]
    assert p.positions_of(0, 2, 2).shape == (0, 4)
    for rank, first, stop in ((0, 0, 3), (2, 0, 1), (0, 2, 1)):
        with pytest.raises(IndexError):
            p.positions_of(rank, first, stop)
