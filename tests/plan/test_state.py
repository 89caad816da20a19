"""EpochPlan: batches of dataset indices, state_dict and resumption (docs/reliability.md E1-E10)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastload.plan import EpochPlan, PlanStateError

from .plantools import plans, served_indices


def random_blocks(n: int, seed: int) -> np.ndarray:
    """A block layout of n records with uneven blocks, some empty."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, n + 1, max(1, n // 8)))
    return np.diff(np.concatenate([[0], cuts, [n]]))


def expected_indices(ranks: list, tail_plan: EpochPlan) -> Counter:
    """Every index once, minus the dropped tail, plus the padding (indices of the first
    positions of the epoch's order), as the plan serving the end of the epoch decides."""
    n = tail_plan.n
    kept = tail_plan.order[np.arange(n - tail_plan.dropped)]
    want = Counter(kept.tolist())
    want.update(tail_plan.order[np.arange(tail_plan.padding) % n].tolist() if n else [])
    return want


MODES = [("global", {}), ("block", {"window": 3})]


@pytest.mark.parametrize("mode,extra", MODES)
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [True, False])
def test_an_epoch_over_all_ranks(mode, extra, drop_last, shuffle):
    n = 1001
    blocks = random_blocks(n, 1) if mode == "block" else None
    for world in (1, 2, 3, 4, 8):
        ranks = plans(
            n,
            world,
            batch_size=16,
            seed=5,
            shuffle=shuffle,
            drop_last=drop_last,
            mode=mode,
            blocks=blocks,
            **extra,
        )
        assert len({p.num_batches for p in ranks}) == 1
        got = served_indices(ranks)
        assert got.dtype == np.int64
        assert Counter(got.tolist()) == expected_indices(ranks, ranks[0])
        p = ranks[-1]
        assert [b.tolist() for b in p] == [p.order[p.positions(j)].tolist() for j in range(len(p))]
    if not shuffle:  # storage order, step by step
        single = EpochPlan(
            n, batch_size=7, shuffle=False, rank=0, world_size=1, mode=mode, blocks=blocks, **extra
        )
        assert np.array_equal(np.concatenate(list(single)), np.arange(n))


@pytest.mark.parametrize("mode,extra", MODES)
@pytest.mark.parametrize("new_world", [2, 3, 4, 1])
def test_resume_with_another_world_size(mode, extra, new_world):
    n, batch = 999, 8
    blocks = random_blocks(n, 2) if mode == "block" else None
    common = dict(seed=11, epoch=3, mode=mode, blocks=blocks, fingerprint="ds-1", **extra)
    old = plans(n, 4, batch_size=batch, **common)
    k = 7  # batches every rank yielded before the job stopped
    state = json.loads(json.dumps(old[0].state_dict(k)))  # a saved state survives JSON
    assert state["consumed"] == 4 * batch * k and all(p.state_dict(k) == state for p in old)
    new = [
        EpochPlan.from_state_dict(
            state,
            n=n,
            batch_size=batch,
            fingerprint="ds-1",
            rank=r,
            world_size=new_world,
            blocks=blocks,
        )
        for r in range(new_world)
    ]
    before, after = served_indices(old, 0, k), served_indices(new)
    # the resumed job serves exactly what the old one would have served from there on
    assert Counter(before.tolist()) + Counter(after.tolist()) == expected_indices(new, new[0])
    # ... which, padding aside, is what the uninterrupted job had left to serve
    rest = served_indices(plans(n, 4, batch_size=batch, **common), k)
    rest, after = rest[: rest.size - old[0].padding], after[: after.size - new[0].padding]
    assert np.array_equal(np.sort(after), np.sort(rest))


def test_resume_with_another_worker_count():
    plan = EpochPlan(500, batch_size=10, seed=1, rank=1, world_size=2)
    for workers in (1, 2, 4):
        by_worker = {j: w for w in range(workers) for j in plan.worker_batches(w, workers)}
        assert sorted(by_worker) == list(range(plan.num_batches))
    # the state never mentions workers: resuming after 5 batches with 4 workers instead of 2
    resumed = EpochPlan.from_state_dict(
        plan.state_dict(5), n=500, batch_size=10, rank=1, world_size=2
    )
    assert [b.tolist() for b in resumed] == [plan.batch(j).tolist() for j in range(5, len(plan))]


def test_end_of_epoch_state_and_next_epoch():
    plan = EpochPlan(100, batch_size=16, seed=2, epoch=0, rank=0, world_size=1, drop_last=True)
    state = plan.state_dict(plan.num_batches)
    assert state["consumed"] == 100  # the epoch is over even though 4 samples were dropped
    resumed = EpochPlan.from_state_dict(state, n=100, batch_size=16, rank=0, world_size=1)
    assert resumed.num_batches == 0
    nxt = EpochPlan(100, batch_size=16, seed=2, epoch=1, rank=0, world_size=1)
    assert not np.array_equal(nxt.batch(0), plan.batch(0))  # a fresh order, from the start
    assert nxt.start == 0


def test_same_seed_same_order():
    a = EpochPlan(10**6, batch_size=64, seed=9, epoch=2, rank=3, world_size=8)
    b = EpochPlan(10**6, batch_size=64, seed=9, epoch=2, rank=3, world_size=8)
    assert all(np.array_equal(a.batch(j), b.batch(j)) for j in (0, 1, 100, len(a) - 1))


def test_rank_and_world_from_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    plan = EpochPlan(30, batch_size=2)
    assert (plan.rank, plan.world_size) == (2, 3)
    assert plan.positions(0).tolist() == [4, 5]
    assert EpochPlan(30, batch_size=2, rank=0).rank == 0  # explicit wins
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="rank 3 is out of range for world_size 3"):
        EpochPlan(30, batch_size=2)


# --------------------------------------------------------------------------- bad states


def saved(**kwargs) -> dict:
    args = {"batch_size": 4, "seed": 1, "rank": 0, "world_size": 1, "fingerprint": "abc"}
    return EpochPlan(100, **{**args, **kwargs}).state_dict(3)


def test_state_for_another_dataset_is_refused():
    with pytest.raises(PlanStateError, match=r"saved for n = 100, but this dataset has n = 99"):
        EpochPlan.from_state_dict(saved(), n=99, batch_size=4, fingerprint="abc")
    with pytest.raises(PlanStateError, match=r"fingerprint = 'abc'.*fingerprint = 'xyz'"):
        EpochPlan.from_state_dict(saved(), n=100, batch_size=4, fingerprint="xyz")
    blocks = np.full(10, 10)
    state = saved(mode="block", blocks=blocks)
    with pytest.raises(PlanStateError, match="layout"):
        EpochPlan.from_state_dict(
            state, n=100, batch_size=4, fingerprint="abc", blocks=np.r_[np.full(9, 10), 5, 5]
        )
    with pytest.raises(ValueError, match="needs blocks="):
        EpochPlan.from_state_dict(state, n=100, batch_size=4, fingerprint="abc")


@pytest.mark.parametrize(
    "change,match",
    [
        ({"consumed": -1}, "corrupted"),
        ({"consumed": 101}, "consumed = 101 > n = 100"),
        ({"consumed": "12"}, "'consumed' should be int"),
        ({"shuffle": 1}, "'shuffle' should be bool"),
        ({"n": True}, "'n' should be int"),
        ({"mode": "sorted"}, "mode='sorted'"),
        ({"version": 99}, "version 99 is not supported"),
        ({"fingerprint": None}, "'fingerprint' should be str"),
        ({"mode": "block"}, "block-mode state needs"),
    ],
)
def test_corrupted_state_is_refused(change, match):
    state = {**saved(), **change}
    with pytest.raises(PlanStateError, match=match):
        EpochPlan.from_state_dict(state, n=100, batch_size=4, fingerprint="abc")
    with pytest.raises(PlanStateError, match="must be a mapping"):
        EpochPlan.from_state_dict([1, 2], n=100, batch_size=4)  # type: ignore[arg-type]


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        EpochPlan(10, batch_size=2, mode="shard")
    with pytest.raises(ValueError, match="blocks hold 12 records in all, but n = 10"):
        EpochPlan(10, batch_size=2, mode="block", blocks=[6, 6])
    with pytest.raises(ValueError, match="rank 4 is out of range"):
        EpochPlan(10, batch_size=2, rank=4, world_size=4)


# --------------------------------------------------------------------------- property


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    n=st.integers(0, 2000),
    world=st.sampled_from([1, 2, 3, 4, 8]),
    batch=st.integers(1, 40),
    drop_last=st.booleans(),
    seed=st.integers(-(2**63), 2**64 - 1),
    mode=st.sampled_from(["global", "block"]),
    new_world=st.sampled_from([1, 2, 3, 4, 8]),
    new_batch=st.integers(1, 40),
    data=st.data(),
)
def test_resume_property(n, world, batch, drop_last, seed, mode, new_world, new_batch, data):
    blocks = random_blocks(n, seed % 1000) if mode == "block" else None
    common = {"seed": seed, "drop_last": drop_last, "mode": mode, "blocks": blocks, "window": 2}
    old = plans(n, world, batch_size=batch, **common)
    k = data.draw(st.integers(0, old[0].num_batches), label="batches before saving")
    state = old[0].state_dict(k)
    new = [
        EpochPlan.from_state_dict(
            state,
            n=n,
            batch_size=new_batch,
            rank=r,
            world_size=new_world,
            drop_last=drop_last,
            blocks=blocks,
        )
        for r in range(new_world)
    ]
    assert len({p.num_batches for p in new}) == 1
    served = Counter(served_indices(old, 0, k).tolist()) + Counter(served_indices(new).tolist())
    tail_plan = old[0] if k == old[0].num_batches else new[0]
    assert served == expected_indices(new, tail_plan)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    world=st.sampled_from([1, 2, 3, 5]),
    batch=st.integers(1, 17),
    drop_last=st.booleans(),
    mode=st.sampled_from(["global", "block"]),
    chunk=st.integers(1, 9),
    data=st.data(),
)
def test_batches_in_chunks_are_the_batches_one_by_one(
    n, world, batch, drop_last, mode, chunk, data
):
    """batches() looks the order up a chunk of batches at a time: the same arrays as batch(j),
    from any first batch and any start, and the same first positions as positions(j)."""
    start = data.draw(st.integers(0, n), label="start")
    rank = data.draw(st.integers(0, world - 1), label="rank")
    blocks = random_blocks(n, n) if mode == "block" else None
    plan = EpochPlan(
        n,
        batch_size=batch,
        seed=n,
        rank=rank,
        world_size=world,
        drop_last=drop_last,
        start=start,
        mode=mode,
        blocks=blocks,
        window=2,
    )
    first = data.draw(st.integers(0, plan.num_batches), label="first")
    got = list(plan.batches(first, chunk=chunk))
    want = [plan.batch(j) for j in range(first, plan.num_batches)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.int64 and g.tolist() == w.tolist()
    assert [plan.partition.first_position(rank, j) for j in range(plan.num_batches)] == [
        int(plan.positions(j)[0]) for j in range(plan.num_batches)
    ]
