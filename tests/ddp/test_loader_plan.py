"""fastload.DataLoader's planned order in one process: determinism from (seed, epoch) across worker
counts and types, set_epoch, state_dict / load_state_dict (docs/reliability.md E1-E3, E9, E10),
shuffle modes, plain map-style datasets, Mix, and the torch-equivalent path's refusals."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

import fastload
from fastload.mix import Mix
from fastload.plan import PlanStateError

from .ddptools import Plain, batch_indices, check_exactly_once

pytestmark = pytest.mark.timeout(120)

N = 97


def run(loader, limit: int | None = None) -> list[list[int]]:
    out = []
    for batch in loader:
        out.append(batch_indices(batch) if isinstance(batch, dict) else batch.tolist())
        if limit is not None and len(out) == limit:
            break
    return out


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(3))


WORKERS = [(0, "process"), (2, "process"), (2, "thread"), (3, "thread")]


@pytest.mark.parametrize("shuffle", [True, "global", "block", False])
def test_same_order_for_any_worker_count_and_type(ids, shuffle):
    runs = [
        run(
            fastload.DataLoader(
                ids, batch_size=6, shuffle=shuffle, seed=11, num_workers=w, worker_type=t
            )
        )
        for w, t in WORKERS
    ]
    assert all(r == runs[0] for r in runs)
    assert sorted(flat(runs[0])) == list(range(N))
    if shuffle:
        assert flat(runs[0]) != list(range(N))
        other = run(fastload.DataLoader(ids, batch_size=6, shuffle=shuffle, seed=12))
        assert flat(other) != flat(runs[0])
    else:
        assert flat(runs[0]) == list(range(N))


def test_epochs_differ_and_set_epoch_picks_one(ids):
    loader = fastload.DataLoader(ids, batch_size=10, shuffle=True, seed=3, num_workers=2)
    e0, e1, e2 = run(loader), run(loader), run(loader)  # each iteration: the next epoch
    assert e0 != e1 != e2 and sorted(flat(e1)) == list(range(N))
    loader.set_epoch(1)
    assert run(loader) == e1
    again = fastload.DataLoader(ids, batch_size=10, shuffle=True, seed=3)
    again.set_epoch(2)
    assert run(again) == e2


@pytest.mark.parametrize("shuffle", [True, "block", False])
@pytest.mark.parametrize("cut", [0, 1, 5, 9])
@pytest.mark.parametrize(
    "before,after",
    [
        ((2, "process"), (3, "thread")),
        ((0, "process"), (2, "process")),
        ((3, "thread"), (0, "process")),
    ],
)
def test_resume_mid_epoch_with_other_workers(index_paths, shuffle, cut, before, after):
    """Workers prefetch ahead; the state counts only the batches handed out."""
    ds = fastload.Dataset(index_paths["z"])

    def make(workers, batch_size=8):
        w, t = workers
        return fastload.DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=5,
            num_workers=w,
            worker_type=t,
            prefetch_factor=4 if w else None,
        )

    full = run(make(before))
    first = make(before)
    it = iter(first)
    got = [batch_indices(next(it)) for _ in range(cut)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    assert state["consumed"] == 8 * cut and state["epoch"] == 0
    del it
    first.close()
    second = make(after, batch_size=5)
    second.load_state_dict(state)
    assert second.state_dict()["consumed"] == 8 * cut  # loaded, not yet iterated
    rest = run(second)
    assert flat(got) + flat(rest) == flat(full)  # same sequence: nothing repeated or skipped
    assert second.state_dict()["consumed"] == N
    nxt = run(second)  # then the next epoch, whole
    assert sorted(flat(nxt)) == list(range(N)) and nxt != full or not shuffle


def test_state_before_iteration_and_at_epoch_end(ids):
    loader = fastload.DataLoader(ids, batch_size=16, shuffle=True, seed=9)
    assert loader.state_dict()["consumed"] == 0 and loader.state_dict()["epoch"] == 0
    loader.set_epoch(4)
    assert loader.state_dict()["epoch"] == 4
    e4 = run(loader)
    end = loader.state_dict()
    assert (end["epoch"], end["consumed"]) == (4, N)
    e5 = run(loader)
    fresh = fastload.DataLoader(ids, batch_size=16, shuffle=True, seed=9)
    fresh.load_state_dict(end)  # an epoch that is over resumes at the next one
    assert run(fresh) == e5 and e5 != e4
    fresh.load_state_dict(end)
    fresh.set_epoch(4)  # asked for the finished epoch itself: nothing of it is left
    assert run(fresh) == []
    fresh.load_state_dict({**end, "consumed": 32})
    fresh.set_epoch(7)  # another epoch than the saved one starts afresh
    assert sorted(flat(run(fresh))) == list(range(N))


def test_len_is_the_epochs_and_a_resumed_epoch_yields_the_rest(ids):
    """len(loader) is the whole epoch's, as torch's and StatefulDataLoader's (frameworks
    that resume count the batches already done from it: Lightning's epoch would end early
    if it were the rest); a resumed iteration yields the rest."""
    loader = fastload.DataLoader(ids, batch_size=10, shuffle=True, seed=1)
    assert len(loader) == 10
    loader.load_state_dict({**loader.state_dict(), "consumed": 40})
    assert len(loader) == 10 and len(run(loader)) == 6
    ranks = [
        fastload.DataLoader(ids, batch_size=10, seed=1, rank=r, world_size=3) for r in range(3)
    ]
    assert [len(r) for r in ranks] == [4, 4, 4]
    assert [r.padding for r in ranks] == [2, 2, 2]  # 97 = 3 steps of 30 + 7, padded to 9


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_in_process_split_the_epoch(ids, drop_last):
    for world in (2, 3, 4):
        loaders = [
            fastload.DataLoader(
                ids,
                batch_size=7,
                shuffle=True,
                seed=2,
                rank=r,
                world_size=world,
                drop_last=drop_last,
                num_workers=1 if r == 0 else 0,
            )
            for r in range(world)
        ]
        per_rank = [run(loader) for loader in loaders]
        assert len({len(b) for b in per_rank}) == 1
        served = [i for j in range(len(per_rank[0])) for b in per_rank for i in b[j]]
        check_exactly_once(served, N, loaders[0].padding, loaders[0].dropped)
        assert loaders[0].stats()["plan"]["world_size"] == world


def test_topology_from_the_environment(ids, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = fastload.DataLoader(ids, batch_size=5, seed=0)
    mine = flat(run(loader))
    other = flat(run(fastload.DataLoader(ids, batch_size=5, seed=0, rank=0)))
    assert len(mine) == len(other) == 49  # 9 steps of 10, then 7 padded to 8
    assert set(mine) | set(other) == set(range(N))
    assert set(mine) & set(other) == {0}  # only the padding (the order's first sample)


def test_every_rank_reading_everything_is_pointed_out(ids, monkeypatch):
    """Under DDP, torch's own order (no sampler, no seed=) gives each rank the whole dataset,
    as torch's DataLoader does: allowed, with a warning that says how to split it."""
    import warnings

    from torch.utils.data.distributed import DistributedSampler

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for dataset in (ids, Plain(N)):
        with pytest.warns(UserWarning, match="one of 2 ranks.*every rank reads all of it"):
            loader = fastload.DataLoader(dataset, batch_size=5, shuffle=True)
        assert len(flat(run(loader))) == N
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastload.DataLoader(ids, batch_size=5, seed=0)
        fastload.DataLoader(ids, batch_size=5, sampler=DistributedSampler(ids, 2, 1))
        fastload.DataLoader(Stream(), batch_size=2)
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("RANK", "0")
        fastload.DataLoader(ids, batch_size=5, shuffle=True)


def test_state_from_another_dataset_or_settings_is_refused(ids, index_paths):
    loader = fastload.DataLoader(ids, batch_size=8, shuffle=True, seed=1)
    run(loader, limit=2)
    state = loader.state_dict()
    other = fastload.DataLoader(
        fastload.Dataset(index_paths["z"]), batch_size=8, shuffle=True, seed=1
    )  # same records, other bytes: another fingerprint
    with pytest.raises(PlanStateError, match="fingerprint"):
        other.load_state_dict(state)
    with pytest.raises(PlanStateError, match="n = 30"):
        fastload.DataLoader(
            fastload.Dataset(index_paths["b"]), batch_size=8, shuffle=True, seed=1
        ).load_state_dict(state)
    with pytest.raises(PlanStateError, match="seed=1"):
        fastload.DataLoader(ids, batch_size=8, shuffle=True, seed=2).load_state_dict(state)
    with pytest.raises(PlanStateError, match="mode"):
        fastload.DataLoader(ids, batch_size=8, shuffle="block", seed=1).load_state_dict(state)
    block = fastload.DataLoader(ids, batch_size=8, shuffle="block", seed=1)
    with pytest.raises(PlanStateError, match="mode"):
        loader.load_state_dict(block.state_dict())
    with pytest.raises(PlanStateError, match="window"):
        fastload.DataLoader(
            ids, batch_size=8, shuffle="block", seed=1, block_window=4
        ).load_state_dict(block.state_dict())
    for bad in ({**state, "consumed": N + 1}, {**state, "consumed": "3"}, {"version": 1}, [1]):
        with pytest.raises(PlanStateError, match="corrupted|mapping"):
            loader.load_state_dict(bad)
    loader.load_state_dict(state)  # a refused state changed nothing


@pytest.mark.parametrize(
    "change,field",
    [
        ({"window": "x"}, "window"),
        ({"window": 0}, "window"),
        ({"layout": 123}, "layout"),
        ({"layout": "../etc"}, "layout"),
        ({"world_size": "2"}, "world_size"),
        ({"world_size": 0}, "world_size"),
        ({"batch_size": -4}, "batch_size"),
        ({"batch_size": [8]}, "batch_size"),
        ({"epoch": 10**30}, "epoch"),
        ({"consumed": 10**30}, "consumed"),
        ({"seed": 2**70}, "seed"),
        ({"n": -1}, "n"),
        ({"rank": 7, "world_size": 2}, "rank"),
        ({"fingerprint": "x" * 1000}, "fingerprint"),
        ({"ahead": [0]}, "ahead"),
        ({"bad_samples": {"rank": 0, "seen": 1, "skipped": 5}}, "bad_samples.skipped"),
        ({"bad_samples": {"rank": "0", "seen": 1, "skipped": 0}}, "bad_samples.rank"),
        ({"bad_samples": [1]}, "bad_samples"),
    ],
)
def test_a_bad_planned_state_is_refused_naming_the_field(ids, change, field):
    loader = fastload.DataLoader(ids, batch_size=8, shuffle=True, seed=1)
    run(loader, limit=2)
    state = json.loads(json.dumps(loader.state_dict()))
    with pytest.raises(PlanStateError, match=field):
        fastload.DataLoader(ids, batch_size=8, shuffle=True, seed=1).load_state_dict(
            {**state, **change}
        )
    block = fastload.DataLoader(ids, batch_size=8, shuffle="block", seed=1)
    saved = block.state_dict()
    for bad in ({"window": None}, {"layout": None}, {"layout": "0" * 15}):
        with pytest.raises(PlanStateError, match="window|layout"):
            block.load_state_dict({**saved, **bad})
    block.load_state_dict(saved)  # a refused state changed nothing


def test_torch_equivalent_path_refuses_a_planned_state_and_conflicts(ids):
    plain = fastload.DataLoader(ids, batch_size=8, shuffle=True)
    planned = fastload.DataLoader(ids, batch_size=8, shuffle=True, seed=1)
    with pytest.raises(PlanStateError, match="planned order"):
        plain.load_state_dict(planned.state_dict())
    with pytest.raises(PlanStateError, match="torch's order"):
        planned.load_state_dict(plain.state_dict())
    for kwargs in (
        {"sampler": [1, 2]},
        {"generator": torch.Generator()},
        {"batch_sampler": [[1]], "batch_size": 1},
    ):
        with pytest.raises(ValueError, match="cannot be combined"):
            fastload.DataLoader(ids, seed=1, **kwargs)
    with pytest.raises(ValueError, match="shuffle must be"):
        fastload.DataLoader(ids, shuffle="windowed")
    with pytest.raises(ValueError, match="fastload.Dataset"):
        fastload.DataLoader(Plain(5), shuffle="block")
    with pytest.raises(ValueError, match="map-style"):
        fastload.DataLoader(Stream(), seed=1)
    with pytest.raises(ValueError, match="batch_size"):
        fastload.DataLoader(ids, seed=1, batch_size=0)


def test_set_epoch_reaches_a_distributed_sampler(ids):
    sampler = torch.utils.data.DistributedSampler(ids, num_replicas=2, rank=0, seed=4)
    loader = fastload.DataLoader(ids, batch_size=5, sampler=sampler)
    loader.set_epoch(3)
    assert sampler.epoch == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_plain_map_style_dataset_resumes(workers):
    def make(batch_size=4):
        return fastload.DataLoader(
            Plain(41), batch_size=batch_size, shuffle=True, seed=8, num_workers=workers
        )

    full = run(make())
    first = make()
    got = run(first, limit=3)
    second = make(batch_size=6)
    second.load_state_dict(first.state_dict())
    assert flat(got) + flat(run(second)) == flat(full)
    assert sorted(flat(full)) == list(range(41))


def test_mix_is_deterministic_weighted_and_resumable(index_paths):
    a, b = fastload.Dataset(index_paths["a"]), fastload.Dataset(index_paths["b"])
    mix = Mix([a, b], weights=[0.75, 0.25], length=120)

    def make(workers=0, batch_size=8):
        return fastload.DataLoader(
            mix, batch_size=batch_size, shuffle=True, seed=4, num_workers=workers
        )

    loader = make(2)
    assert loader.fast
    full = run(loader)  # batch_indices checks every field: rows of the two datasets agree
    assert run(make(0)) == full and len(flat(full)) == 120
    order = mix.order(4, 0, True)
    drawn, local = order[np.arange(120)]
    assert Counter(drawn.tolist()) == {0: 90, 1: 30}  # exact at the epoch's end
    assert flat(full) == local.tolist()  # record i of either dataset has "i" = i
    first = make(2)
    got = run(first, limit=5)
    second = make(0, batch_size=7)
    second.load_state_dict(first.state_dict())
    assert flat(got) + flat(run(second)) == flat(full)
    assert run(make(2)) != run(loader)  # the loader's next epoch: another draw
    with pytest.raises(PlanStateError, match="fingerprint"):
        fastload.DataLoader(
            Mix([a, b], [0.5, 0.5], length=120), batch_size=8, shuffle=True, seed=4
        ).load_state_dict(first.state_dict())


def test_mix_in_block_order_is_deterministic_resumable_and_split(index_paths):
    """shuffle='block' on a Mix: each dataset's passes in block order (plan.mix), the same
    batches with 0 or 2 workers, resumable with another batch size, every record once over
    three ranks, and a state of the global order refused."""
    a, b = fastload.Dataset(index_paths["a"]), fastload.Dataset(index_paths["b"])
    mix = Mix([a, b])  # weights = sizes: every record of both once

    def make(workers=0, batch_size=8, **kw):
        return fastload.DataLoader(
            mix,
            batch_size=batch_size,
            shuffle="block",
            seed=2,
            num_workers=workers,
            block_window=2,
            **kw,
        )

    loader = make(2)
    assert loader.fast
    full = run(loader)
    assert run(make(0)) == full
    order = mix.order(2, 0, True, blocks=[_blocks(a), _blocks(b)], window=2)
    drawn, local = order[np.arange(len(mix))]
    assert flat(full) == local.tolist()
    assert sorted(zip(drawn.tolist(), local.tolist())) == [(0, i) for i in range(N)] + [
        (1, i) for i in range(30)
    ]
    assert flat(full) != flat(run(fastload.DataLoader(mix, batch_size=8, shuffle=True, seed=2)))
    first = make(2)
    got = run(first, limit=4)
    second = make(0, batch_size=5)
    second.load_state_dict(first.state_dict())
    assert flat(got) + flat(run(second)) == flat(full)
    with pytest.raises(PlanStateError, match="mode"):
        fastload.DataLoader(mix, batch_size=8, shuffle=True, seed=2).load_state_dict(
            first.state_dict()
        )
    with pytest.raises(PlanStateError, match="window"):
        fastload.DataLoader(
            mix, batch_size=8, shuffle="block", seed=2, block_window=3
        ).load_state_dict(first.state_dict())
    per_rank = [run(make(rank=r, world_size=3, drop_last=True)) for r in range(3)]
    served = [i for j in range(len(per_rank[0])) for r in per_rank for i in r[j]]
    assert served == local[: len(served)].tolist()
    with pytest.raises(ValueError, match="Mix of them"):
        fastload.DataLoader(Mix([a, Plain(5)]), batch_size=4, shuffle="block")


def _blocks(ds: fastload.Dataset) -> np.ndarray:
    return np.concatenate(
        [ds.shard_reader(s).blocks["n_records"] for s in range(len(ds.shards))]
    ).astype(np.int64)


def test_mix_of_plain_datasets_takes_the_general_path():
    mix = Mix([Plain(10), Plain(5)])  # weights = sizes: every sample once
    loader = fastload.DataLoader(mix, batch_size=4, shuffle=True, seed=0)
    assert not loader.fast
    assert sorted(flat(run(loader))) == sorted([*range(10), *range(5)])


def test_persistent_workers_resume_and_in_order_false(ids):
    loader = fastload.DataLoader(
        ids, batch_size=4, shuffle=True, seed=3, num_workers=2, persistent_workers=True
    )
    run(loader)  # epoch 0
    it = iter(loader)  # epoch 1, left after 3 batches
    head = [batch_indices(next(it)) for _ in range(3)]
    state = loader.state_dict()
    del it
    loader.load_state_dict(state)
    tail = run(loader)  # the same workers finish epoch 1
    loader.close()
    ref = fastload.DataLoader(ids, batch_size=4, shuffle=True, seed=3)
    ref.set_epoch(1)
    assert head + tail == run(ref)
    unordered = fastload.DataLoader(ids, batch_size=4, seed=3, num_workers=2, in_order=False)
    assert sorted(flat(run(unordered))) == list(range(N))
    assert unordered.state_dict()["consumed"] == N  # (tests/loader: resuming out of order)
    with pytest.raises(ValueError, match="in_order"):
        fastload.DataLoader(
            Plain(N), batch_size=4, seed=3, num_workers=2, in_order=False
        ).state_dict()


def test_mix_split_over_ranks_draws_every_sample_once(index_paths):
    a, b = fastload.Dataset(index_paths["a"]), fastload.Dataset(index_paths["b"])
    mix = Mix([a, b])  # weights = sizes, length = 127: every record of both once
    per_rank = [
        run(
            fastload.DataLoader(
                mix, batch_size=6, shuffle=True, seed=1, rank=r, world_size=3, drop_last=True
            )
        )
        for r in range(3)
    ]
    assert len({len(r) for r in per_rank}) == 1
    served = [i for j in range(len(per_rank[0])) for r in per_rank for i in r[j]]
    order = mix.order(1, 0, True)
    drawn, local = order[np.arange(len(served))]
    assert served == local.tolist()  # the mix's draws, in order, split over the ranks
    pairs = list(zip(*order[np.arange(len(mix))]))
    assert sorted((int(d), int(i)) for d, i in pairs) == [(0, i) for i in range(N)] + [
        (1, i) for i in range(30)
    ]
