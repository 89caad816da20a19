"""Workers of the fast path: start methods, threads, persistent workers, in_order=False,
prefetch_factor and timeout."""

from __future__ import annotations

import multiprocessing
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader as TorchLoader

import fastload

from .loadertools import N, SlowDataset, alive, check_batch, worker_pids

pytestmark = pytest.mark.timeout(60)


def indices(loader) -> list[list[int]]:
    return [check_batch(b) for b in loader]


def sequential(batch_size: int, n: int = N) -> list[list[int]]:
    return [list(range(k, min(k + batch_size, n))) for k in range(0, n, batch_size)]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods(ds1, method, no_leaks):
    """Each start method gives the same batches (the slabs are shared, not copied, when the
    workers' arguments are pickled); a context object works like its name."""
    context = method if method != "forkserver" else multiprocessing.get_context(method)
    loader = fastload.DataLoader(
        ds1, batch_size=9, num_workers=2, persistent_workers=True, multiprocessing_context=context
    )
    for _ in range(2):
        assert indices(loader) == sequential(9)
    assert all(
        isinstance(w, multiprocessing.get_context(method).Process) for w in loader._pool.workers
    )
    # a batch larger than any before grows the pool: the new slab travels to the workers
    held = list(loader)
    assert [check_batch(b) for b in held] == sequential(9)
    loader.close()


@pytest.mark.parametrize("shuffle", [False, True])
def test_thread_workers(ds, shuffle):
    def make(cls, **kw):
        return cls(
            ds,
            batch_size=6,
            num_workers=2,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(1),
            **kw,
        )

    loader = make(fastload.DataLoader, worker_type="thread")
    before = multiprocessing.active_children()
    got = indices(loader)
    assert multiprocessing.active_children() == before  # threads, not processes
    assert got == [b["i"].tolist() for b in make(TorchLoader)]


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_persistent_workers_three_epochs(ds1, worker_type, no_leaks):
    loader = fastload.DataLoader(
        ds1, batch_size=8, num_workers=2, persistent_workers=True, worker_type=worker_type
    )
    first = None
    for _ in range(3):
        assert indices(loader) == sequential(8)
        workers = list(loader._pool.workers)
        if first is None:
            first = workers
        assert workers == first and all(w.is_alive() for w in workers)
        if worker_type == "process":
            assert worker_pids(loader) == [w.pid for w in first]
    if worker_type == "process":
        pids = worker_pids(loader)
        loader.close()
        assert not any(alive(p) for p in pids)


def test_persistent_workers_shuffle_matches_torch_every_epoch(ds1, no_leaks):
    """torch draws its workers' base seed from the generator once, when persistent workers
    start; the shuffle order of later epochs depends on it."""

    def run(cls):
        loader = cls(
            ds1,
            batch_size=8,
            num_workers=2,
            persistent_workers=True,
            shuffle=True,
            generator=torch.Generator().manual_seed(3),
        )
        return [[b["i"].tolist() for b in loader] for _ in range(3)]

    assert run(fastload.DataLoader) == run(TorchLoader)


class Rotating:
    """A sampler whose order changes every epoch (rotated by 7 more each time), so that a
    batch left over from an earlier epoch cannot pass for one of this epoch."""

    def __init__(self, n: int = N):
        self.n, self.epoch = n, 0

    def __iter__(self):
        shift, self.epoch = 7 * self.epoch, self.epoch + 1
        return iter([(i + shift) % self.n for i in range(self.n)])

    def __len__(self):
        return self.n

    def expected(self, batch_size: int) -> list[list[int]]:
        order = [(i + 7 * self.epoch) % self.n for i in range(self.n)]
        return [order[k : k + batch_size] for k in range(0, self.n, batch_size)]


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_persistent_workers_after_a_break(ds_paths, worker_type, no_leaks):
    """An epoch left early leaves batches in flight; the next epoch must not receive them,
    and their slabs must come back."""
    ds = SlowDataset(ds_paths["none"], delay=0.002)
    sampler = Rotating()
    loader = fastload.DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        persistent_workers=True,
        worker_type=worker_type,
        prefetch_factor=4,
        sampler=sampler,
    )
    slabs = len(loader._slabs.arrays)
    for _ in range(4):
        for k, b in enumerate(loader):
            check_batch(b)
            if k == 1:
                break
        want = sampler.expected(4)
        assert indices(loader) == want
    assert len(loader._slabs.arrays) <= slabs + 2  # breaking again and again leaks no slab
    loader.close()


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_in_order_false_delivers_every_sample_once(ds_paths, worker_type):
    # Batch 0 is slow: with in_order=False later batches overtake it.
    ds = SlowDataset(ds_paths["none"], hang_on=0, hang=0.5)
    loader = fastload.DataLoader(
        ds, batch_size=5, num_workers=2, in_order=False, worker_type=worker_type
    )
    got = indices(loader)
    assert Counter(i for b in got for i in b) == Counter(range(N))
    assert sorted(got) == sequential(5)
    assert got[0] != [0, 1, 2, 3, 4]  # overtaken
    ordered = fastload.DataLoader(ds, batch_size=5, num_workers=2, worker_type=worker_type)
    assert indices(ordered) == sequential(5)


@pytest.mark.parametrize("prefetch_factor", [1, 2, 5])
@pytest.mark.parametrize("num_workers", [1, 2])
def test_prefetch_factor(ds1, prefetch_factor, num_workers):
    loader = fastload.DataLoader(
        ds1, batch_size=3, num_workers=num_workers, prefetch_factor=prefetch_factor
    )
    assert loader.prefetch_factor == prefetch_factor
    assert indices(loader) == sequential(3)


def test_timeout_that_is_not_reached(ds_paths):
    ds = SlowDataset(ds_paths["none"], delay=0.01)
    loader = fastload.DataLoader(ds, batch_size=10, num_workers=2, timeout=5)
    assert indices(loader) == sequential(10)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # torch's, for 3 > 2 cores
def test_more_workers_than_batches(ds1, no_leaks):
    loader = fastload.DataLoader(ds1, batch_size=60, num_workers=3)
    assert indices(loader) == sequential(60)


def test_two_iterators_at_once(ds1):
    """torch allows two live iterators of one loader (non-persistent)."""
    loader = fastload.DataLoader(ds1, batch_size=10, num_workers=2)
    a, b = iter(loader), iter(loader)
    got_a, got_b = [], []
    for x, y in zip(a, b):
        got_a.append(check_batch(x))
        got_b.append(check_batch(y))
    assert got_a == got_b == sequential(10)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_loader_over_a_dataset_of_every_record_once_per_worker_count(ds1):
    """A sanity check of the whole epoch for 1..4 workers (scheduling must not lose any)."""
    for workers in range(1, 5):
        loader = fastload.DataLoader(ds1, batch_size=7, num_workers=workers)
        got = [i for b in loader for i in check_batch(b)]
        assert got == list(range(N))


def _report_worker(out_dir: str, worker_id: int) -> None:
    """worker_init_fn: what a worker sees of itself, as torch's workers see it."""
    import random
    from pathlib import Path

    import numpy as np
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    seen = [
        info.id,
        info.num_workers,
        info.seed,
        torch.initial_seed(),
        int(np.random.get_state()[1][0]),
        random.random(),
        type(info.dataset).__name__,
    ]
    Path(out_dir, f"{type(info.dataset).__module__}-{worker_id}").write_text(repr(seen))


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_are_seeded_and_described_as_torch_does(ds1, tmp_path, persistent):
    """Fast-path workers seed random, torch and numpy and fill get_worker_info() exactly as
    torch's own workers do for the same generator: worker_init_fn code written for torch (the
    usual numpy reseeding idiom) works unchanged."""
    import ast
    import functools

    reports = {}
    for loader_class in (TorchLoader, fastload.DataLoader):
        out = tmp_path / loader_class.__module__
        out.mkdir()
        loader = loader_class(
            ds1,
            batch_size=10,
            num_workers=2,
            persistent_workers=persistent,
            generator=torch.Generator().manual_seed(7),
            worker_init_fn=functools.partial(_report_worker, str(out)),
        )
        for _ in loader:
            pass
        reports[loader_class] = [(out / p.name).read_text() for p in sorted(out.iterdir())]
        if isinstance(loader, fastload.DataLoader):
            assert loader.fast
            loader.close()
    assert len(reports[TorchLoader]) == 2
    assert reports[fastload.DataLoader] == reports[TorchLoader]
    ids = [ast.literal_eval(r)[:2] for r in reports[TorchLoader]]
    assert ids == [[0, 2], [1, 2]]
