"""Exact resumption with in_order=False: a state saved while batches came out of order lists
the ones its rank had past its position, and a resumed loader skips exactly those."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import fastload
from fastload.plan import PlanStateError

from .loadertools import N, SlowDataset, check_batch


def planned(ds, **kw):
    return fastload.DataLoader(ds, batch_size=2, shuffle=True, seed=5, **kw)


def test_a_state_saved_out_of_order_resumes_with_nothing_repeated_or_lost(ds_paths):
    path = ds_paths["none"]
    full = [check_batch(b) for b in planned(fastload.Dataset(path))]  # the epoch's order
    # Worker 0 stalls on the epoch's first batch, so the first two batches handed out are
    # worker 1's (its next ones wait: worker 0's queue is full and holds the turn).
    slow = SlowDataset(path, hang_on=full[0][0], hang=1.0)
    first = planned(slow, num_workers=2, in_order=False)
    it = iter(first)
    head = [check_batch(next(it)) for _ in range(2)]
    assert full[0] not in head
    state = json.loads(json.dumps(first.state_dict()))  # JSON-safe
    assert state["consumed"] == 0 and state["rank"] == 0
    assert state["ahead"] == sorted(full.index(b) for b in head)
    del it
    first.close()

    second = planned(fastload.Dataset(path), num_workers=2, in_order=False)
    second.load_state_dict(state)
    assert len(second) == len(full)  # len(loader) is the epoch's, as torch's
    it = iter(second)
    middle = [check_batch(next(it)) for _ in range(3)]
    state2 = second.state_dict()
    del it
    second.close()
    third = planned(fastload.Dataset(path), num_workers=0)  # in order, any workers
    third.load_state_dict(state2)
    tail = [check_batch(b) for b in third]
    got = [tuple(b) for b in head + middle + tail]
    assert Counter(got) == Counter(tuple(b) for b in full)  # each batch exactly once
    assert sorted(i for b in got for i in b) == list(range(N))


def test_an_out_of_order_state_resumes_only_its_own_rank_world_and_batch_size(ds_paths):
    path = ds_paths["none"]
    full = [check_batch(b) for b in planned(fastload.Dataset(path))]
    first = planned(SlowDataset(path, hang_on=full[0][0], hang=1.0), num_workers=2, in_order=False)
    it = iter(first)
    next(it)
    state = first.state_dict()
    del it
    first.close()
    assert state["ahead"]
    ds = fastload.Dataset(path)
    for other in (dict(rank=1, world_size=2), dict(rank=0, world_size=2)):
        with pytest.raises(PlanStateError, match="saved by rank 0 of 1.*in_order=False"):
            planned(ds, **other).load_state_dict(state)
    with pytest.raises(PlanStateError, match="batch_size 2"):
        fastload.DataLoader(ds, batch_size=3, shuffle=True, seed=5).load_state_dict(state)
    bad = {**state, "ahead": [0, "x"]}
    with pytest.raises(PlanStateError, match="'ahead'"):
        planned(ds).load_state_dict(bad)
    in_order = planned(ds, num_workers=2)
    it = iter(in_order)
    next(it)
    assert "ahead" not in in_order.state_dict()  # in order: the same state on every rank
    del it
    in_order.close()


def test_the_general_path_still_refuses_an_out_of_order_state():
    loader = fastload.DataLoader(
        list(range(40)), batch_size=4, seed=0, num_workers=2, in_order=False
    )
    with pytest.raises(ValueError, match="in_order=False needs the fast path"):
        loader.state_dict()


def test_a_resumed_iteration_numbers_its_batches_around_the_skipped_ones(ds_paths):
    """The cursor maps the iteration's i-th batch to the plan's, past the skipped ones: the
    batches sent and their augmentation seeds are the plan's, as in the first run."""
    from fastload.loader.planned_order import Cursor

    plan = planned(fastload.Dataset(ds_paths["none"]))._planner.epoch_plan(0)
    skip = (0, 3, 4, 9)
    cursor = Cursor(plan, skip=skip)
    kept = [j for j in range(plan.num_batches) if j not in skip]
    assert [cursor.plan_batch(i) for i in range(len(kept))] == kept
    plain = Cursor(plan)
    assert [cursor.rng_seed(i) for i in range(len(kept))] == [plain.rng_seed(j) for j in kept]
    assert cursor.delivered == 1 and cursor.ahead == {3, 4, 9}  # batch 0 had, then a gap
    for j in (1, 2):
        cursor.handed_out(j)
    assert cursor.delivered == 5 and cursor.ahead == {9}
