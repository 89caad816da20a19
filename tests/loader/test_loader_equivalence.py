"""fastload.DataLoader is a drop-in torch.utils.data.DataLoader: same batches, same order, same
length, same argument errors, for the fast path (a fastload.Dataset) and the general path (any
other dataset, or a custom collate_fn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
    get_worker_info,
)
from torch.utils.data import DataLoader as TorchLoader

import fastload

from .loadertools import N, assert_same, check_batch

pytestmark = pytest.mark.timeout(60)


def epochs(loader, n: int = 1) -> list[list]:
    return [list(loader) for _ in range(n)]


def assert_fast_equals_torch(fast_epochs, torch_epochs) -> None:
    """Fast-path batches against torch's default_collate of ds[i]: same record order, same
    dtypes, shapes and values of the fixed-size fields, same lists for str/bytes."""
    assert len(fast_epochs) == len(torch_epochs)
    for e, (fe, te) in enumerate(zip(fast_epochs, torch_epochs)):
        assert [b["i"].tolist() for b in fe] == [b["i"].tolist() for b in te], f"epoch {e}"
        for k, (fb, tb) in enumerate(zip(fe, te)):
            check_batch(fb)
            assert_same(fb, tb, f"epoch {e} batch {k}")


# (batch_size, shuffle, drop_last)
SHAPES = [
    (1, False, False),
    (8, False, False),
    (8, False, True),
    (7, True, False),
    (7, True, True),
    (N, True, False),
    (N + 5, False, False),
    (N + 5, False, True),
]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batch_size,shuffle,drop_last", SHAPES)
def test_fast_path_matches_torch(ds, batch_size, shuffle, drop_last, num_workers):
    def make(cls):
        return cls(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(7),
        )

    fast, ref = make(fastload.DataLoader), make(TorchLoader)
    assert fast.fast
    assert len(fast) == len(ref)
    got, want = epochs(fast, 2), epochs(ref, 2)
    assert_fast_equals_torch(got, want)
    assert len(got[0]) == len(ref)
    if shuffle and batch_size < N:  # the generator moves on: epochs differ, as in torch
        assert [b["i"].tolist() for b in got[0]] != [b["i"].tolist() for b in got[1]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shuffle_without_generator_follows_torch_global_seed(ds1, num_workers):
    def run(cls):
        torch.manual_seed(1234)
        loader = cls(ds1, batch_size=6, shuffle=True, num_workers=num_workers)
        return epochs(loader, 2)

    assert_fast_equals_torch(run(fastload.DataLoader), run(TorchLoader))


def _samplers(ds):
    """(name, factory of keyword arguments) for samplers torch accepts."""
    order = [5, 3, 99, 0, 0, 42, 17, 98, 1, 2, 64, 63, 50]  # with a duplicate
    return {
        "list": lambda: {"sampler": order, "batch_size": 4},
        "sequential": lambda: {"sampler": SequentialSampler(ds), "batch_size": 9},
        "subset_random": lambda: {
            "sampler": SubsetRandomSampler(
                list(range(10, 60)), generator=torch.Generator().manual_seed(3)
            ),
            "batch_size": 6,
        },
        "weighted": lambda: {
            "sampler": WeightedRandomSampler(
                [1.0] * N, 40, replacement=True, generator=torch.Generator().manual_seed(5)
            ),
            "batch_size": 8,
            "drop_last": True,
        },
        "random_replacement": lambda: {
            "sampler": RandomSampler(
                ds, replacement=True, num_samples=33, generator=torch.Generator().manual_seed(9)
            ),
            "batch_size": 5,
        },
        "batch_sampler": lambda: {
            "batch_sampler": BatchSampler(
                RandomSampler(ds, generator=torch.Generator().manual_seed(11)), 7, False
            )
        },
        "batch_sampler_lists": lambda: {
            "batch_sampler": [[3], [1, 2, 99, 98, 0], [4, 4], list(range(30, 50)), [7, 6]]
        },
    }


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("kind", list(_samplers(None)))
def test_samplers_match_torch(ds1, kind, num_workers):
    kwargs = _samplers(ds1)[kind]
    fast = fastload.DataLoader(ds1, num_workers=num_workers, **kwargs())
    ref = TorchLoader(ds1, num_workers=num_workers, **kwargs())
    assert fast.fast
    assert len(fast) == len(ref)
    assert_fast_equals_torch(epochs(fast, 2), epochs(ref, 2))


class RandomBatches:
    """A batch sampler with no batch_size attribute, drawing its batches from a generator."""

    def __init__(self, n: int, seed: int):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        sizes = torch.randint(1, 9, (self.n,), generator=self.generator).tolist()
        at = 0
        for size in sizes:
            if at >= self.n:
                return
            yield order[at : at + size]
            at += size

    def __len__(self):  # torch's DataLoader asks; iterating to count would draw
        return 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batch_sampler_without_batch_size_draws_as_in_torch(ds1, num_workers):
    """Such a sampler is iterated once per epoch, as torch does, never ahead to size the
    buffers: the same random batches, epoch after epoch."""
    fast = fastload.DataLoader(ds1, batch_sampler=RandomBatches(N, 5), num_workers=num_workers)
    ref = TorchLoader(ds1, batch_sampler=RandomBatches(N, 5), num_workers=num_workers)
    got, want = epochs(fast, 3), epochs(ref, 3)
    assert_fast_equals_torch(got, want)
    assert got[0][0]["i"].tolist() != got[1][0]["i"].tolist()


@pytest.mark.parametrize("num_workers,persistent", [(0, False), (2, False), (2, True)])
def test_batches_that_grow_between_epochs(ds1, num_workers, persistent):
    """A batch sampler without batch_size whose batches grow from one epoch to the next: the
    buffers grow with them, and a batch kept from an earlier epoch stays intact."""

    class Growing:
        def __init__(self):
            self.epoch = 0

        def __iter__(self):
            self.epoch += 1
            yield list(range(5 * self.epoch))
            yield [9, 8]

        def __len__(self):
            return 2

    fast = fastload.DataLoader(
        ds1, batch_sampler=Growing(), num_workers=num_workers, persistent_workers=persistent
    )
    kept = None
    for epoch in range(1, 4):
        batches = list(fast)
        assert [b["i"].tolist() for b in batches] == [list(range(5 * epoch)), [9, 8]]
        for b in batches:
            check_batch(b)
        kept = kept or batches
    assert fast.layout.batch_size == 15
    for b in kept:
        check_batch(b)
    assert [b["i"].tolist() for b in kept] == [list(range(5)), [9, 8]]


def test_batch_sampler_larger_than_its_batch_size_is_refused(ds1):
    class Liar(list):
        batch_size = 2

    with pytest.raises(ValueError, match="batch_size attribute says \\(2\\)"):
        list(fastload.DataLoader(ds1, batch_sampler=Liar([[1, 2], [3, 4, 5]])))


# ----------------------------------------------------------------------------- general path


class PlainDataset(torch.utils.data.Dataset):
    """Every kind of sample torch's default_collate handles."""

    def __len__(self):
        return 23

    def __getitem__(self, i):
        return {
            "t": torch.full((2, 3), float(i)),
            "a": np.arange(4, dtype=np.int16) + i,
            "n": i,
            "f": i / 3,
            "s": f"s{i}",
            "tup": (i, torch.tensor([i, -i])),
            "nested": {"k": [np.float64(i), i * 2], "m": {"deep": torch.tensor(i)}},
        }


class TupleDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 11

    def __getitem__(self, i):
        return torch.tensor([i, i + 1]), i % 3


class Stream(IterableDataset):
    """Shards itself across workers, as torch's docs show."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(start, self.n, step):
            yield {"v": torch.tensor([i]), "s": str(i)}


def _collate(samples):
    return {"count": len(samples), "first": samples[0]}


def _init(worker_id):
    torch.manual_seed(100 + worker_id)


class RandomPerSample(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return i, torch.rand(1)  # depends on the worker's seed: worker_init_fn's doing


def _general_cases(ds):
    return {
        "plain": lambda: (PlainDataset(), {"batch_size": 4}),
        "plain_shuffle": lambda: (
            PlainDataset(),
            {
                "batch_size": 5,
                "shuffle": True,
                "drop_last": True,
                "generator": torch.Generator().manual_seed(2),
            },
        ),
        "tuples": lambda: (TupleDataset(), {"batch_size": 3}),
        "no_batching": lambda: (TupleDataset(), {"batch_size": None}),
        "iterable": lambda: (Stream(17), {"batch_size": 4}),
        "iterable_unbatched": lambda: (Stream(5), {"batch_size": None}),
        "custom_collate_plain": lambda: (TupleDataset(), {"batch_size": 4, "collate_fn": _collate}),
        "custom_collate_fastload": lambda: (ds, {"batch_size": 10, "collate_fn": _collate}),
        "fastload_no_batching": lambda: (ds, {"batch_size": None}),
        "worker_init_fn": lambda: (RandomPerSample(), {"batch_size": 2, "worker_init_fn": _init}),
    }


@pytest.mark.parametrize(
    "case,num_workers",
    [(c, w) for c in _general_cases(None) for w in (0, 2) if c != "worker_init_fn" or w],
)
def test_general_path_matches_torch(ds1, case, num_workers):
    make = _general_cases(ds1)[case]
    dataset, kwargs = make()
    fast = fastload.DataLoader(dataset, num_workers=num_workers, **kwargs)
    assert not fast.fast
    dataset, kwargs = make()
    ref = TorchLoader(dataset, num_workers=num_workers, **kwargs)
    if not isinstance(dataset, IterableDataset):
        assert len(fast) == len(ref)
    got, want = epochs(fast, 2), epochs(ref, 2)
    assert len(got[0]) > 0
    assert_same(got, want)


# ----------------------------------------------------------------------------- argument errors


def _error(make):
    with pytest.raises(Exception) as info:
        make()
    return type(info.value), str(info.value)


BAD_ARGS = {
    "prefetch_without_workers": {"prefetch_factor": 2},
    "negative_workers": {"num_workers": -1},
    "negative_timeout": {"timeout": -1},
    "sampler_and_shuffle": {"sampler": [1, 2], "shuffle": True},
    "batch_sampler_and_batch_size": {"batch_sampler": [[1, 2]], "batch_size": 2},
    "batch_sampler_and_shuffle": {"batch_sampler": [[1, 2]], "shuffle": True},
    "batch_sampler_and_drop_last": {"batch_sampler": [[1, 2]], "drop_last": True},
    "batch_sampler_sampler_shuffle": {"batch_sampler": [[1]], "sampler": [1], "shuffle": True},
    "persistent_without_workers": {"persistent_workers": True},
    "negative_prefetch": {"num_workers": 1, "prefetch_factor": -1},
    "no_batching_and_drop_last": {"batch_size": None, "drop_last": True},
    "context_without_workers": {"multiprocessing_context": "spawn"},
    "unknown_start_method": {"num_workers": 1, "multiprocessing_context": "teleport"},
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
@pytest.mark.parametrize("dataset", ["fastload", "plain"])
def test_argument_errors_match_torch(ds1, case, dataset):
    data = ds1 if dataset == "fastload" else TupleDataset()
    kwargs = BAD_ARGS[case]
    want = _error(lambda: TorchLoader(data, **kwargs))
    got = _error(lambda: fastload.DataLoader(data, **kwargs))
    assert got == want


def test_prefetch_factor_zero_does_not_hang(ds1):
    """torch fails on iteration (an assertion); fastload must fail too, never wait forever."""
    with pytest.raises((ValueError, AssertionError), match="prefetch_factor"):
        loader = fastload.DataLoader(ds1, batch_size=4, num_workers=1, prefetch_factor=0)
        next(iter(loader))


def test_fastload_specific_argument_errors(ds1):
    with pytest.raises(ValueError, match="worker_type"):
        fastload.DataLoader(ds1, worker_type="fiber")
    with pytest.raises(ValueError, match="decode"):
        fastload.DataLoader(TupleDataset(), decode={"x": fastload.ImageDecode()})
