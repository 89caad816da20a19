"""fastload.DataLoader as a torch DataLoader: a subclass of it, generic, with torch's attributes
holding what it uses, assignment refused as torch refuses it, len(), the iterator's public
behaviour, and torch's error semantics (a batch that raises is raised by its next(), the
next next() returns the batch after it) on both paths, with and without workers, in order
and out of order (docs/reliability.md C1)."""

from __future__ import annotations

import pickle
import typing

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from torch.utils.data._utils.collate import default_collate, default_convert

import fastload
from fastload.errors import DecodeError

from .loadertools import N, check_batch

pytestmark = pytest.mark.timeout(120)


class Plain(torch.utils.data.Dataset):
    """i -> i, raising ValueError for the indices in ``bad``."""

    def __init__(self, n: int, bad=()) -> None:
        self.n, self.bad = n, set(bad)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i in self.bad:
            raise ValueError(f"bad item {i}")
        return i


class FailingDataset(fastload.Dataset):
    """The index dataset; reading a batch that holds a record of ``bad`` raises."""

    bad: tuple = (4,)

    def read_into(self, indices, out=None, **kw):
        hit = [int(i) for i in np.asarray(indices) if int(i) in self.bad]
        if hit:
            raise ValueError(f"bad record {hit[0]}")
        return super().read_into(indices, out, **kw)


def outcomes(loader, key=None) -> list:
    """Each next() of one epoch: the batch's items, or the exception class it raised."""
    out: list = []
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return out
        except Exception as e:
            out.append(type(e).__name__)
            continue
        if key is not None:
            batch = batch[key]
        out.append(batch.tolist() if hasattr(batch, "tolist") else batch)


# ----------------------------------------------------------------------------- the surface


def test_a_subclass_of_torchs_dataloader_and_generic(ds1):
    for loader in (
        fastload.DataLoader(ds1, batch_size=4),
        fastload.DataLoader(Plain(10), batch_size=4),
        fastload.DataLoader(ds1, batch_size=4, seed=1),
    ):
        assert isinstance(loader, torch.utils.data.DataLoader)
    # annotations evaluated at import (no `from __future__ import annotations`) work
    alias = fastload.DataLoader[dict]
    assert typing.get_origin(alias) is fastload.DataLoader and typing.get_args(alias) == (dict,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 8, "shuffle": True, "num_workers": 2, "drop_last": True},
        {"batch_size": 3, "num_workers": 2, "persistent_workers": True, "prefetch_factor": 3},
        {"batch_size": None},
        {"batch_sampler": BatchSampler(SequentialSampler(range(N)), 7, False)},
        {"sampler": list(range(10)), "batch_size": 2, "timeout": 5.0, "num_workers": 1},
        {"batch_size": 4, "generator": torch.Generator(), "shuffle": True, "in_order": False},
    ],
)
@pytest.mark.parametrize("plain", [False, True])
def test_torchs_attributes_hold_what_the_loader_uses(ds1, kwargs, plain):
    dataset = Plain(N) if plain else ds1
    ours = fastload.DataLoader(dataset, **kwargs)
    theirs = torch.utils.data.DataLoader(dataset, **kwargs)
    for name in (
        "dataset",
        "batch_size",
        "drop_last",
        "num_workers",
        "pin_memory",
        "timeout",
        "worker_init_fn",
        "prefetch_factor",
        "persistent_workers",
        "generator",
        "in_order",
        "pin_memory_device",
        "multiprocessing_context",
        "collate_fn",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert type(ours.sampler) is type(theirs.sampler)
    assert type(ours.batch_sampler) is type(theirs.batch_sampler)
    assert len(ours) == len(theirs)
    assert ours.collate_fn in (default_collate, default_convert)  # fast path: as default_collate
    # what the loader yields is what those attributes make
    if kwargs.get("shuffle") or kwargs.get("generator"):
        return
    got = list(ours)
    assert len(got) == len(theirs)


def test_a_planned_loader_reports_its_plan_as_its_sampler(ds1):
    loader = fastload.DataLoader(ds1, batch_size=8, shuffle=True, seed=5, rank=1, world_size=3)
    sampler = loader.sampler
    assert isinstance(sampler, DistributedSampler) and not isinstance(sampler, SequentialSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.seed, sampler.shuffle) == (3, 1, 5, True)
    assert isinstance(loader.batch_sampler, BatchSampler)
    assert loader.batch_sampler.sampler is sampler and loader.batch_size == 8
    batches = [check_batch(b) for b in loader]
    # the sampler lists what the loader reads, and the batch sampler cuts it the same way
    loader.set_epoch(0)
    assert list(sampler) == [i for b in batches for i in b]
    assert [list(b) for b in loader.batch_sampler] == batches
    assert len(loader) == len(batches) == len(loader.batch_sampler)
    assert len(sampler) == sum(len(b) for b in batches)
    sampler.set_epoch(1)  # reaches the plan, as a DistributedSampler's does
    assert loader.stats()["plan"]["epoch"] == 1 and [check_batch(b) for b in loader] != batches


@pytest.mark.parametrize("name", ["batch_size", "batch_sampler", "sampler", "drop_last"])
def test_assignment_after_construction_is_refused_as_torch_refuses_it(ds1, name):
    loader = fastload.DataLoader(ds1, batch_size=2)
    theirs = torch.utils.data.DataLoader(ds1, batch_size=2)
    with pytest.raises(ValueError) as info:
        setattr(loader, name, 5)
    with pytest.raises(ValueError) as torchs:
        setattr(theirs, name, 5)
    assert str(info.value) == str(torchs.value)
    for other in ("dataset", "persistent_workers"):
        with pytest.raises(ValueError, match=f"{other} attribute should not be set"):
            setattr(loader, other, None)
    assert [len(check_batch(b)) for b in loader][:2] == [2, 2]


def test_other_attributes_set_anew_are_used_at_the_next_iteration(ds1):
    """torch reads num_workers, collate_fn ... when an iteration starts: so does fastload."""
    loader = fastload.DataLoader(ds1, batch_size=10)
    first = [check_batch(b) for b in loader]
    loader.num_workers, loader.prefetch_factor = 2, 2
    it = iter(loader)
    assert [check_batch(next(it)) for _ in range(3)] == first[:3]
    assert loader._pool is not None and len(loader._pool.workers) == 2
    assert [check_batch(b) for b in it] == first[3:]
    loader.collate_fn = lambda rows: [row["i"] for row in rows]
    assert list(loader) == first  # the general path, with that collate_fn


class Stream(IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize(
    "dataset,kwargs",
    [
        (Plain(10), {"batch_size": 3}),
        (Plain(10), {"batch_size": 3, "drop_last": True}),
        (Plain(10), {"batch_size": None}),
        (Stream(10), {"batch_size": 4}),
        (Stream(10), {"batch_size": 4, "drop_last": True}),
    ],
)
def test_len_and_the_iterator_behave_as_torchs(dataset, kwargs):
    ours = fastload.DataLoader(dataset, **kwargs)
    theirs = torch.utils.data.DataLoader(dataset, **kwargs)
    assert len(ours) == len(theirs)
    it = iter(ours)
    assert iter(it) is it and len(it) == len(theirs)
    with pytest.raises(NotImplementedError, match="cannot be pickled"):
        pickle.dumps(it)
    assert [b.tolist() if hasattr(b, "tolist") else b for b in it] == [
        b.tolist() if hasattr(b, "tolist") else b for b in theirs
    ]
    assert next(it, "done") == "done"  # exhausted, as torch's


def test_persistent_workers_hand_out_the_same_iterator(ds1):
    loader = fastload.DataLoader(ds1, batch_size=10, num_workers=2, persistent_workers=True)
    theirs = torch.utils.data.DataLoader(Plain(5), num_workers=1, persistent_workers=True)
    assert (iter(loader) is iter(loader)) == (iter(theirs) is iter(theirs)) is True
    assert sum(len(check_batch(b)) for b in loader) == N
    loader.close()


# ----------------------------------------------------------------- torch's error semantics


@pytest.mark.parametrize("num_workers", [0, 2])
def test_torch_goes_on_after_a_batch_that_raises(num_workers):
    """The behaviour to match: a dataset failing on item 2 gives [0, 1, err, 3, 4, 5]."""
    loader = torch.utils.data.DataLoader(
        Plain(6, bad=[2]), batch_size=None, num_workers=num_workers
    )
    assert outcomes(loader) == [0, 1, "ValueError", 3, 4, 5]


@pytest.mark.parametrize("num_workers,in_order", [(0, True), (2, True), (2, False)])
def test_general_path_goes_on_after_a_batch_that_raises(num_workers, in_order):
    loader = fastload.DataLoader(
        Plain(6, bad=[2]), batch_size=None, num_workers=num_workers, in_order=in_order
    )
    got = outcomes(loader)
    if in_order:
        assert got == [0, 1, "ValueError", 3, 4, 5]
    else:
        assert sorted(map(str, got)) == ["0", "1", "3", "4", "5", "ValueError"]
    assert outcomes(loader)[2:3] == ["ValueError"] or not in_order  # and again next epoch


@pytest.mark.parametrize(
    "num_workers,worker_type,in_order,persistent",
    [
        (0, "process", True, False),
        (2, "process", True, False),
        (2, "process", True, True),
        (2, "process", False, False),
        (2, "thread", True, False),
    ],
)
def test_fast_path_goes_on_after_a_batch_that_raises(
    ds_paths, num_workers, worker_type, in_order, persistent
):
    FailingDataset.bad = (4,)  # batch 2 of batches of 2
    with FailingDataset(ds_paths["none"]) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=2,
            num_workers=num_workers,
            worker_type=worker_type,
            in_order=in_order,
            persistent_workers=persistent,
        )
        for _ in range(2):  # and the next epoch the same
            got = outcomes(loader, key="i")
            want = [[2 * j, 2 * j + 1] if j != 2 else "ValueError" for j in range(N // 2)]
            if in_order:
                assert got == want
            else:
                assert sorted(map(str, got)) == sorted(map(str, want))
        loader.close()


def test_a_worker_error_names_the_batch_and_keeps_its_traceback(ds_paths):
    FailingDataset.bad = (9,)
    with FailingDataset(ds_paths["none"]) as ds:
        loader = fastload.DataLoader(ds, batch_size=4, num_workers=2)
        it = iter(loader)
        assert [check_batch(next(it)) for _ in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
        with pytest.raises(ValueError) as info:
            next(it)
        text = str(info.value)
        assert "while loading batch 2 (dataset indices [8, 9, 10, 11])" in text
        assert "bad record 9" in text and "Traceback" in text
        assert check_batch(next(it)) == [12, 13, 14, 15]


def test_a_state_after_a_raised_batch_goes_on_after_it(ds_paths):
    """A batch that raised counts as handed out: a resumed run goes on after it."""
    FailingDataset.bad = (4,)
    with FailingDataset(ds_paths["none"]) as ds:
        for kwargs in ({"seed": 3}, {"shuffle": False}):
            loader = fastload.DataLoader(ds, batch_size=2, **kwargs)
            it = iter(loader)
            next(it), next(it)
            with pytest.raises(ValueError):
                next(it)
            state = loader.state_dict()
            again = fastload.DataLoader(fastload.Dataset(ds_paths["none"]), batch_size=2, **kwargs)
            again.load_state_dict(state)
            rest = [check_batch(b) for b in again]
            assert rest == [check_batch(b) for b in it]


def test_decode_error_without_workers_names_shard_and_record(tmp_path):
    from tests.loader.test_loader_dali import write

    path = write(tmp_path / "ds", bad=5, compression="none")
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=4, decode={"image": fastload.ImageDecode(32)}, num_workers=0
        )
        it = iter(loader)
        next(it)
        with pytest.raises(DecodeError) as info:
            next(it)
        text = str(info.value)
        assert "field 'image' of dataset record 5 (record 5 of shard " in text
        assert str(path) in text and ".fls" in text, text
        assert next(it)["label"].tolist() == [8, 9, 10, 11]  # and the loader goes on


def test_sampler_types_are_those_torch_makes(ds1):
    assert isinstance(fastload.DataLoader(ds1, shuffle=True).sampler, RandomSampler)
    assert isinstance(fastload.DataLoader(ds1).sampler, SequentialSampler)
