"""Slab lifetime: a batch's tensors are the slab; a slab is reused only once every tensor of
its batch is garbage; held batches never change; the pool grows instead of deadlocking and
stays bounded when batches are released."""

from __future__ import annotations

import gc
import math
import os

import pytest
import torch

import fastload

from .loadertools import N, check_batch

pytestmark = pytest.mark.timeout(60)

MODES = [(0, "process"), (2, "process"), (2, "thread")]


def slab_count(loader) -> int:
    return len(loader._slabs.arrays)


@pytest.mark.parametrize("num_workers,worker_type", MODES)
def test_holding_every_batch_of_an_epoch(ds, num_workers, worker_type):
    loader = fastload.DataLoader(ds, batch_size=3, num_workers=num_workers, worker_type=worker_type)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == -(-N // 3)
        assert [check_batch(b) for b in batches] == [
            list(range(k, min(k + 3, N))) for k in range(0, N, 3)
        ]
        # every held batch has memory of its own
        ptrs = {b[f].data_ptr() for b in batches for f in ("i", "x", "tokens")}
        assert len(ptrs) == 3 * len(batches)
        assert slab_count(loader) >= len(batches)
        del batches


@pytest.mark.parametrize("num_workers,worker_type", MODES)
def test_holding_more_batches_than_the_pool_has_slabs(ds1, num_workers, worker_type):
    """The pool grows while batches are held (100 batches of 1; it starts with 66 slabs for
    two workers): every batch comes with its own values, with thread workers too (they
    once filled copies of the grown slabs: zeros and garbage from the 67th batch on)."""
    loader = fastload.DataLoader(
        ds1, batch_size=1, num_workers=num_workers, worker_type=worker_type
    )
    start = slab_count(loader)
    batches = list(loader)
    assert [check_batch(b) for b in batches] == [[i] for i in range(N)]
    assert slab_count(loader) >= N > start
    # grown by half at a time, not a slab at a time (one arena, one descriptor each)
    assert len(loader._slabs.arenas) <= math.ceil(math.log(N / start, 1.5)) + 3


@pytest.mark.parametrize("num_workers,worker_type", MODES)
def test_a_held_batch_keeps_its_values(ds1, num_workers, worker_type):
    loader = fastload.DataLoader(
        ds1, batch_size=4, num_workers=num_workers, worker_type=worker_type
    )
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
    from .loadertools import write_dataset

    n = 600
    with fastload.Dataset(write_dataset(tmp_path / "long", n)) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=2, num_workers=num_workers, worker_type=worker_type
        )
        start = slab_count(loader)
        seen_ptrs = set()
        for _epoch in range(2):
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


def _shmem_bytes() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss_Shmem:"):
                return int(line.split()[1]) * 1024
    pytest.skip("this kernel reports no Pss_Shmem")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux /proc only")
def test_slab_memory_is_taken_only_as_slabs_are_used():
    """A pool of six 8 MiB shared slabs costs nothing until written, and a loop that frees
    each slab before taking the next keeps using the same one (the others stay untouched)."""
    from fastload.loader.slabs import SlabPool

    size = 8 << 20
    before = _shmem_bytes()
    pool = SlabPool(size, 6, shared=True)
    assert pool.arenas[0].is_shared()
    assert _shmem_bytes() - before < size // 4
    used = set()
    for k in range(12):
        slab = pool.acquire(grow=False)
        used.add(slab)
        pool.arrays[slab][:] = k
        pool.release(slab)
    assert len(used) == 1
    assert size <= _shmem_bytes() - before < 2 * size
    # two slabs held at once: the second is another one, and both keep their bytes
    a, b = pool.acquire(grow=False), pool.acquire(grow=False)
    assert a != b and a in used
    pool.arrays[b][:] = 7
    assert int(pool.arrays[a][0]) == 11 and int(pool.arrays[b][-1]) == 7
