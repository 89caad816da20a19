"""loader.stats(), pin_memory and device= (CUDA parts skip where there is no GPU)."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from torch.utils.data import DataLoader as TorchLoader

import fastload

from .loadertools import N, SlowDataset, check_batch

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- stats


@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "process"), (2, "thread")])
def test_stats_after_an_epoch(ds, num_workers, worker_type):
    loader = fastload.DataLoader(
        ds, batch_size=8, num_workers=num_workers, drop_last=True, worker_type=worker_type
    )
    assert loader.stats()["samples"] == 0 and loader.stats()["samples_per_s"] == 0
    delivered = sum(len(check_batch(b)) for b in loader)
    s = loader.stats()
    assert delivered == s["samples"] == (N // 8) * 8
    assert s["batches"] == len(loader) == N // 8
    assert s["samples_per_s"] > 0 and s["mb_per_s"] > 0 and s["seconds"] > 0
    assert 0 <= s["data_stall"] <= 1 and 0 <= s["wait_seconds"] <= s["seconds"]
    assert set(s["stage_seconds"]) >= {"read", "decode", "collate", "transfer"}
    assert s["stage_seconds"]["read"] > 0 and s["stage_seconds"]["collate"] > 0
    assert all(v >= 0 for v in s["stage_seconds"].values())
    list(loader)  # counters run across epochs
    assert loader.stats()["samples"] == 2 * delivered


def test_stats_data_stall_is_lower_with_a_slow_consumer(ds_paths):
    def stall(consumer_sleep: float) -> float:
        ds = SlowDataset(ds_paths["none"], delay=0.01)
        loader = fastload.DataLoader(ds, batch_size=4, num_workers=2, worker_type="thread")
        for _ in loader:
            time.sleep(consumer_sleep)
        return loader.stats()["data_stall"]

    fast, slow = stall(0.0), stall(0.03)
    assert 0 <= slow < fast <= 1
    assert fast > 0.5 and slow < 0.3


@pytest.mark.parametrize(
    "kwargs,samples",
    [
        ({"batch_size": 4}, 11),
        ({"batch_size": None}, 11),
        ({"batch_size": 3, "drop_last": True}, 9),
    ],
)
def test_stats_on_the_general_path(kwargs, samples):
    data = [(torch.tensor([i, i]), i) for i in range(11)]  # a list is a map-style dataset
    loader = fastload.DataLoader(data, **kwargs)
    assert not loader.fast
    got = list(loader)
    s = loader.stats()
    assert s["batches"] == len(got) and s["samples"] == samples
    assert s["samples_per_s"] > 0 and 0 <= s["data_stall"] <= 1


# ----------------------------------------------------------------------------- pin_memory


def _warnings_of(make_and_run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_and_run()
    return [str(w.message) for w in caught if "pin_memory" in str(w.message)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_pin_memory_without_a_gpu_warns_like_torch_and_works(ds1, num_workers):
    got: list = []
    mine = _warnings_of(
        lambda: got.extend(
            fastload.DataLoader(ds1, batch_size=10, num_workers=num_workers, pin_memory=True)
        )
    )
    theirs = _warnings_of(
        lambda: list(TorchLoader(ds1, batch_size=10, num_workers=num_workers, pin_memory=True))
    )
    assert theirs and set(mine) == set(theirs)
    assert [check_batch(b) for b in got][-1] == list(range(90, 100))
    # the general path is torch's own
    plain = _warnings_of(lambda: list(fastload.DataLoader([1, 2, 3], pin_memory=True)))
    assert set(plain) == set(theirs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
@pytest.mark.parametrize("dataset", ["fastload", "plain"])
def test_cuda_device_without_a_gpu_is_a_clear_error_at_construction(ds1, dataset):
    data = ds1 if dataset == "fastload" else [torch.zeros(2)] * 4
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        fastload.DataLoader(data, batch_size=2, device="cuda")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cpu_device(ds1, num_workers):
    loader = fastload.DataLoader(ds1, batch_size=10, num_workers=num_workers, device="cpu")
    batches = list(loader)
    assert all(b["x"].device.type == "cpu" for b in batches)
    assert [check_batch(b) for b in batches][0] == list(range(10))


def test_device_applies_on_the_general_path():
    class Meta(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"a": torch.full((2,), i), "pair": (torch.tensor(i), "s")}

    loader = fastload.DataLoader(Meta(), batch_size=2, device="meta")
    batch = next(iter(loader))
    want = next(iter(TorchLoader(Meta(), batch_size=2)))
    assert batch["a"].device.type == "meta" and batch["pair"][0].device.type == "meta"
    # the structure stays as torch's collate made it
    assert type(batch["pair"]) is type(want["pair"]) and batch["pair"][1] == want["pair"][1]
    assert batch["a"].shape == want["a"].shape and batch["a"].dtype == want["a"].dtype


# ----------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.mark.cuda
@pytest.mark.parametrize("num_workers", [0, 2])
def test_pin_memory_with_a_gpu_pins_the_batches(ds1, num_workers):
    loader = fastload.DataLoader(ds1, batch_size=10, num_workers=num_workers, pin_memory=True)
    batches = list(loader)
    assert all(b["x"].is_pinned() and b["tokens"].is_pinned() for b in batches)
    assert [check_batch(b) for b in batches][-1] == list(range(90, 100))


@pytest.mark.cuda
@pytest.mark.parametrize("num_workers", [0, 2])
def test_cuda_device_copies_batches(ds1, num_workers):
    loader = fastload.DataLoader(ds1, batch_size=10, num_workers=num_workers, device="cuda")
    ref = list(fastload.DataLoader(ds1, batch_size=10))
    for got, want in zip(loader, ref):
        assert got["x"].is_cuda and got["tokens"].is_cuda and got["i"].is_cuda
        for k in ("i", "x", "tokens"):
            assert torch.equal(got[k].cpu(), want[k])
        assert got["s"] == want["s"] and got["b"] == want["b"]


@pytest.mark.cuda
def test_cuda_device_with_held_batches(ds1):
    """Device copies must be complete before their slab is reused."""
    loader = fastload.DataLoader(ds1, batch_size=2, num_workers=2, device="cuda")
    batches = list(loader)
    torch.cuda.synchronize()
    assert [b["i"].cpu().tolist() for b in batches] == [[k, k + 1] for k in range(0, N, 2)]


@pytest.mark.cuda
def test_loaders_made_again_and_again_pin_their_slabs_each_time(ds1):
    """Each loader's slab arenas are unregistered from CUDA as they are freed: a new loader's
    arenas (often mapped at the same addresses) register again."""
    import gc

    for _ in range(5):
        loader = fastload.DataLoader(ds1, batch_size=10, num_workers=2, pin_memory=True)
        assert all(b["x"].is_pinned() for b in loader)
        del loader
        gc.collect()


class _Event:
    """Stands in for a torch.cuda.Event in the bookkeeping test below (no GPU here)."""

    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = True


def test_a_slab_being_copied_to_the_gpu_is_not_reused_before_the_copy_ends():
    """to_device returns without waiting for the copy; CopiesInFlight keeps the host batch,
    and so its slab, until the copy's event has completed."""
    import numpy as np

    from fastload.loader.device import CopiesInFlight
    from fastload.loader.slabs import SlabPool

    pool = SlabPool(64, 2, shared=False)
    copies = CopiesInFlight()
    events = []
    for _ in range(2):
        slab = pool.acquire(grow=False)
        batch = {"x": torch.from_numpy(pool.lease(slab).view(np.int64))}
        events.append(_Event())
        copies.add(events[-1], batch)
        del batch
    assert pool.free() == 0  # both copies still running: neither slab is free
    events[0].done = True
    copies.add(_Event(), {})  # the next copy looks at the finished ones
    assert pool.free() == 1
    copies.wait()  # the loader's close(): every copy finishes, every slab comes back
    assert pool.free() == 2 and events[1].done
