"""Resuming torch's own order, without seed= (docs/reliability.md E1-E3): as torchdata's
StatefulDataLoader resumes, and more. For every kind of sampling (shuffle with and without a
generator, no shuffle, samplers and batch samplers of torch's, a sampler with a state of its
own, no automatic batching), IterableDatasets (with and without a state of their own) and
map-style datasets that keep their own state: the batches after a resume -- from a state
saved before the first batch, mid-epoch or at the epoch's end, through JSON, with 0, 1 or
several workers before and after -- are those of the uninterrupted run, and so is the epoch
after it."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

import fastload
from fastload.errors import PlanStateError

from .resumetools import check_resume, epoch_of

pytestmark = pytest.mark.timeout(240)


class Plain(torch.utils.data.Dataset):
    def __init__(self, n: int = 40) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class CountingSampler(torch.utils.data.Sampler):
    """A sampler with a state of its own (torchdata's README example, JSON-safe): random
    indices from its own generator, as many as ``limit`` per epoch."""

    def __init__(self, high: int, seed: int, limit: int) -> None:
        self.high, self.seed, self.limit = high, seed, limit
        self.g = torch.Generator().manual_seed(seed)
        self.draws = 0

    def __iter__(self):
        for _ in range(self.limit):
            self.draws += 1
            yield int(torch.randint(high=self.high, size=(1,), generator=self.g))

    def __len__(self) -> int:
        return self.limit

    def state_dict(self) -> dict:
        self.g = torch.Generator().manual_seed(self.seed + self.draws)  # (its state: a number)
        return {"draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        self.draws = state["draws"]
        self.g = torch.Generator().manual_seed(self.seed + self.draws)


def global_seed() -> None:
    torch.manual_seed(7)


SAMPLINGS = {
    # name: (loader arguments given the dataset, the program's random state to restore)
    "shuffle": (lambda ds: {"batch_size": 4, "shuffle": True}, global_seed),
    "shuffle_generator": (
        lambda ds: {
            "batch_size": 4,
            "shuffle": True,
            "generator": torch.Generator().manual_seed(3),
        },
        lambda: None,
    ),
    "sequential": (lambda ds: {"batch_size": 3, "drop_last": True}, lambda: None),
    "random_sampler_generator": (
        lambda ds: {
            "batch_size": 5,
            "sampler": RandomSampler(ds, generator=torch.Generator().manual_seed(9)),
        },
        lambda: None,
    ),
    "replacement": (
        lambda ds: {"batch_size": 4, "sampler": RandomSampler(ds, replacement=True)},
        global_seed,
    ),
    "subset": (
        lambda ds: {"batch_size": 2, "sampler": SubsetRandomSampler(range(5, 35))},
        global_seed,
    ),
    "weighted": (
        lambda ds: {
            "batch_size": 4,
            "sampler": WeightedRandomSampler([1.0 + i % 3 for i in range(len(ds))], 30),
        },
        global_seed,
    ),
    "batch_sampler": (
        lambda ds: {
            "batch_sampler": BatchSampler(
                RandomSampler(ds, generator=torch.Generator().manual_seed(1)), 6, False
            )
        },
        lambda: None,
    ),
    "stateful_sampler": (
        lambda ds: {"batch_size": 3, "sampler": CountingSampler(len(ds), 5, 20)},
        lambda: None,
    ),
    "distributed": (
        lambda ds: {"batch_size": 4, "sampler": _distributed(ds)},
        lambda: None,
    ),
    "no_batching": (lambda ds: {"batch_size": None, "shuffle": True}, global_seed),
}


def _distributed(ds):
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=4)
    sampler.set_epoch(3)
    return sampler


@pytest.mark.parametrize("workers", [(0, 0), (2, 1), (1, 3)])
@pytest.mark.parametrize("at", [0, 3, "end"])
@pytest.mark.parametrize("sampling", sorted(SAMPLINGS))
def test_general_path_resumes_every_sampling(sampling, at, workers):
    kwargs, seed = SAMPLINGS[sampling]
    ds = Plain(40)

    def make(num_workers: int):
        return fastload.DataLoader(ds, num_workers=num_workers, **kwargs(ds))

    length = len(make(0))
    check_resume(make, at=length if at == "end" else at, workers=workers, seed=seed)


@pytest.mark.parametrize("workers", [(0, 0), (2, 1), (0, 2)])
@pytest.mark.parametrize("at", [0, 4, "end"])
@pytest.mark.parametrize(
    "sampling", ["shuffle", "shuffle_generator", "sequential", "batch_sampler", "stateful_sampler"]
)
def test_fast_path_resumes_torchs_order(ds1, sampling, at, workers):
    kwargs, seed = SAMPLINGS[sampling]

    def make(num_workers: int):
        loader = fastload.DataLoader(ds1, num_workers=num_workers, **kwargs(ds1))
        assert loader.fast
        return loader

    length = len(make(0))
    check_resume(make, at=length if at == "end" else at, workers=workers, seed=seed)


def test_a_state_from_a_later_epoch_resumes_that_epoch(ds1):
    def make(num_workers: int):
        return fastload.DataLoader(
            ds1,
            batch_size=8,
            shuffle=True,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(11),
        )

    check_resume(make, at=5, workers=(2, 0), epochs_before=2)


@pytest.mark.parametrize("at", [4, "end"])
@pytest.mark.parametrize("generator", [True, False], ids=["generator", "global"])
@pytest.mark.parametrize("dataset", ["fast", "general"])
def test_persistent_workers_resume(ds1, dataset, generator, at):
    # without a generator, the next epoch's order is drawn from torch's global generator,
    # which persistent workers leave alone between epochs (no new base seed is drawn)
    ds = ds1 if dataset == "fast" else Plain(40)

    def make(num_workers: int):
        return fastload.DataLoader(
            ds,
            batch_size=8,
            shuffle=True,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(2) if generator else None,
        )

    length = len(make(0))
    at = length if at == "end" else at
    check_resume(make, at=at, workers=(2, 2), epochs_before=1, seed=global_seed)


# ------------------------------------------------------------------------- IterableDatasets


class Shards(IterableDataset):
    """Items 0..n-1, worker w taking every num_workers-th from w (uneven: some workers end
    first). Without a state of its own: resumed by counting and skipping."""

    def __init__(self, n: int = 37) -> None:
        self.n = n

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, k = (info.id, info.num_workers) if info is not None else (0, 1)
        return iter(range(w, self.n, k))


class StatefulShards(IterableDataset):
    """torchdata's README example, JSON-safe: a shuffled range per worker, with a state of
    its own (the position), which a resume loads instead of skipping."""

    def __init__(self, high: int = 30, seed: int = 0) -> None:
        self.high, self.seed = high, seed
        self.i = 0
        self.loads = 0

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, k = (info.id, info.num_workers) if info is not None else (0, 1)
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.high, generator=g)[w : self.high : k].tolist()
        while self.i < len(order):
            self.i += 1
            yield order[self.i - 1]
        self.i = 0

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
@pytest.mark.parametrize("at", [0, 2, 5, 10, "end"])
@pytest.mark.parametrize("dataset", [Shards, StatefulShards])
def test_iterable_datasets_resume(dataset, at, workers):
    def make(num_workers: int):
        return fastload.DataLoader(dataset(), batch_size=3, num_workers=num_workers)

    length = len(epoch_of(make(workers)))  # (with uneven shards: more, with more workers)
    check_resume(make, at=length if at == "end" else at, workers=(workers, workers))


@pytest.mark.parametrize("every", [2, 3])
def test_iterable_state_sent_every_n_steps_still_resumes_exactly(every):
    def make(num_workers: int):
        return fastload.DataLoader(
            StatefulShards(60), batch_size=2, num_workers=num_workers, snapshot_every_n_steps=every
        )

    for at in (1, 4, 7, 30):
        check_resume(make, at=at, workers=(2, 2))


def test_an_iterable_state_resumes_only_with_its_worker_count():
    loader = fastload.DataLoader(Shards(), batch_size=3, num_workers=2)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state["iterable"]["num_workers"] == 2
    del it
    with pytest.raises(PlanStateError, match="num_workers=2.*num_workers=3"):
        fastload.DataLoader(Shards(), batch_size=3, num_workers=3).load_state_dict(state)


def test_workers_of_a_resumed_iterable_are_the_saved_runs_workers():
    """get_worker_info() in the resumed run names the worker whose items each one makes,
    and it names the user's dataset."""
    seen = []

    def init(worker_id):
        info = torch.utils.data.get_worker_info()
        assert isinstance(info.dataset, Shards) and info.id == worker_id

    loader = fastload.DataLoader(Shards(), batch_size=3, num_workers=2, worker_init_fn=init)
    it = iter(loader)
    seen = [next(it).tolist() for _ in range(3)]  # workers 0, 1, 0: worker 1's next
    state = loader.state_dict()
    assert state["iterable"]["next"] == 1
    del it
    again = fastload.DataLoader(Shards(), batch_size=3, num_workers=2, worker_init_fn=init)
    again.load_state_dict(state)
    rest = [b.tolist() for b in again]
    assert rest[0] == [7, 9, 11]  # worker 1's second batch
    assert sorted(i for b in seen + rest for i in b) == list(range(37))


# ------------------------------------------------------------- datasets with their own state


class Counting(torch.utils.data.Dataset):
    """A map-style dataset that keeps state of its own: each item comes with how many items
    this copy of the dataset made before it (the state: that count)."""

    def __init__(self, n: int = 30) -> None:
        self.n, self.made = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.made += 1
        return torch.tensor([i, self.made])

    def state_dict(self) -> dict:
        return {"made": self.made}

    def load_state_dict(self, state: dict) -> None:
        self.made = state["made"]


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("at", [0, 1, 4, "end"])
def test_map_style_datasets_with_their_own_state_resume(workers, at):
    def make(num_workers: int):
        return fastload.DataLoader(
            Counting(),
            batch_size=3,
            shuffle=True,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(5),
        )

    length = len(make(0))
    check_resume(make, at=length if at == "end" else at, workers=(workers, workers))


@pytest.mark.parametrize("at", [0, 4, "end"])
@pytest.mark.parametrize("generator", [True, False], ids=["generator", "global"])
def test_persistent_workers_of_a_dataset_with_its_own_state_resume(at, generator):
    """Persistent workers keep their copies' states from epoch to epoch: the epochs after a
    resumed one go on from them too (and draw no new base seed from the generator)."""

    def make(num_workers: int):
        return fastload.DataLoader(
            Counting(),
            batch_size=3,
            shuffle=True,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(5) if generator else None,
        )

    length = len(make(0))
    at = length if at == "end" else at
    check_resume(make, at=at, workers=(2, 2), epochs_before=1, seed=global_seed)


def test_a_dataset_state_resumes_only_with_its_worker_count():
    loader = fastload.DataLoader(Counting(), batch_size=3, num_workers=2)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    with pytest.raises(PlanStateError, match="num_workers"):
        fastload.DataLoader(Counting(), batch_size=3, num_workers=1).load_state_dict(state)
    with pytest.raises(PlanStateError, match="state of its own"):
        fastload.DataLoader(Plain(30), batch_size=3, num_workers=2).load_state_dict(state)


# ------------------------------------------------------------------------------- the state


def test_state_dict_is_json_and_counts_handed_batches(ds1):
    loader = fastload.DataLoader(ds1, batch_size=10, shuffle=True, num_workers=2)
    assert loader.state_dict()["consumed"] == 0
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()  # workers have prefetched more: not counted
    assert state["consumed"] == 2 and not state["finished"]
    assert json.loads(json.dumps(state)) == state
    for _ in it:
        pass
    end = loader.state_dict()
    assert end["finished"] and end["consumed"] == 0
    loader.close()


@pytest.mark.parametrize(
    "change,field",
    [
        ({"consumed": "3"}, "consumed"),
        ({"consumed": -1}, "consumed"),
        ({"consumed": 10**30}, "consumed"),
        ({"finished": "yes"}, "finished"),
        ({"version": 9}, "version"),
        ({"order": "mine"}, "order"),
        ({"iteration": 2.5}, "iteration"),
        ({"sampler": {"kind": "dice", "state": 1}}, "sampler"),
        ({"sampler": {"kind": "generator", "state": "not base64!"}}, "sampler"),
        ({"generator": 12}, "generator"),
        ({"base_seed": 2**70}, "base_seed"),
        ({"ahead": [0, 2]}, "ahead"),
        ({"ahead": "2"}, "ahead"),
        ({"num_workers": -2}, "num_workers"),
        ({"batches": "x"}, "batches"),
        ({"consumed": 999}, "consumed"),
    ],
)
def test_a_bad_state_is_refused_naming_the_field(ds1, change, field):
    loader = fastload.DataLoader(
        ds1, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    it = iter(loader)
    next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    target = fastload.DataLoader(ds1, batch_size=10, shuffle=True, generator=torch.Generator())
    with pytest.raises(PlanStateError, match=field):
        target.load_state_dict({**state, **change})
    target.load_state_dict(state)  # a refused state changed nothing; the good one loads


def test_a_state_of_another_kind_of_sampler_is_refused(ds1):
    shuffled = fastload.DataLoader(ds1, batch_size=10, shuffle=True, generator=torch.Generator())
    it = iter(shuffled)
    next(it)
    with pytest.raises(PlanStateError, match="sampler"):
        fastload.DataLoader(ds1, batch_size=10, shuffle=True).load_state_dict(shuffled.state_dict())


def test_snapshot_every_n_steps_is_checked():
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(ValueError, match="snapshot_every_n_steps"):
            fastload.DataLoader(Plain(), snapshot_every_n_steps=bad)
    assert fastload.DataLoader(Plain(), snapshot_every_n_steps=None).snapshot_every_n_steps is None
    assert fastload.DataLoader(Plain(), snapshot_every_n_steps=4).snapshot_every_n_steps == 4
