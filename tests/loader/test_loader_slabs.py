"""Slab lifetime: a batch's tensors are the slab; a slab is reused only once every tensor of
its batch is garbage; held batches never change; the pool grows instead of deadlocking and
stays bounded when batches are released."""

from __future__ import annotations

import gc

import pytest
import torch
from loadertools import N, check_batch

import fastload

pytestmark = pytest.mark.timeout(60)

MODES = [(0, "process"), (2, "process"), (2, "thread")]


def slab_count(loader) -> int:
    return len(loader._slabs.arrays)


@pytest.mark.parametrize("num_workers,worker_type", MODES)
def test_holding_every_batch_of_an_epoch(ds, num_workers, worker_type):
    loader = fastload.DataLoader(ds, batch_size=3, num_workers=num_workers,
                                 worker_type=worker_type)  # fmt: skip
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == -(-N // 3)
        assert [check_batch(b) for b in batches] == [list(range(k, min(k + 3, N)))
                                                     for k in range(0, N, 3)]  # fmt: skip
        # every held batch has memory of its own
        ptrs = {b[f].data_ptr() for b in batches for f in ("i", "x", "tokens")}
        assert len(ptrs) == 3 * len(batches)
        assert slab_count(loader) >= len(batches)
        del batches


@pytest.mark.parametrize("num_workers,worker_type", MODES)
def test_a_held_batch_keeps_its_values(ds1, num_workers, worker_type):
    loader = fastload.DataLoader(ds1, batch_size=4, num_workers=num_workers,
                                 worker_type=worker_type)  # fmt: skip
    it = iter(loader)
    first = next(it)
    kept = {k: v.clone() for k, v in first.items() if isinstance(v, torch.Tensor)}
    # keep only a view of one field of another batch, drop the rest of it
    second = next(it)
    tokens_view = second["tokens"][1:3]
    tokens_kept = tokens_view.clone()
    del second
    gc.collect()
    rest = 0
    for b in it:
        check_batch(b)
        rest += 1
        del b
    assert rest == len(loader) - 2
    for k, v in kept.items():
        assert torch.equal(first[k], v), k
    check_batch(first, [0, 1, 2, 3])
    assert torch.equal(tokens_view, tokens_kept)


@pytest.mark.parametrize("num_workers,worker_type", MODES)
def test_released_batches_recycle_their_slabs(tmp_path, num_workers, worker_type):
    from loadertools import write_dataset

    n = 600
    with fastload.Dataset(write_dataset(tmp_path / "long", n)) as ds:
        loader = fastload.DataLoader(ds, batch_size=2, num_workers=num_workers,
                                     worker_type=worker_type)  # fmt: skip
        start = slab_count(loader)
        seen_ptrs = set()
        for epoch in range(2):
            count = 0
            for b in loader:
                check_batch(b)
                seen_ptrs.add(b["i"].data_ptr())
                count += 1
            assert count == n // 2
        # Every batch was released before the next was asked for: no growth beyond a slab
        # or two, and slabs were reused (far fewer distinct buffers than batches).
        assert slab_count(loader) <= start + 2 < n // 2
        assert len(seen_ptrs) <= slab_count(loader)


def test_holding_a_few_batches_at_a_time(ds1):
    """A sliding window of held batches (gradient accumulation): all stay intact."""
    loader = fastload.DataLoader(ds1, batch_size=2, num_workers=2, prefetch_factor=1)
    window = []
    start = len(loader._slabs.arrays)
    for b in loader:
        window.append(b)
        if len(window) > 6:
            window.pop(0)
        for w in window:
            check_batch(w)
    assert check_batch(window[-1]) == [98, 99]
    assert len(loader._slabs.arrays) <= start + 7  # grew by at most the window


def test_batches_survive_the_loader(ds1):
    loader = fastload.DataLoader(ds1, batch_size=10, num_workers=2)
    batches = list(loader)
    del loader
    gc.collect()
    assert [check_batch(b) for b in batches][-1] == list(range(90, 100))
