"""Batches received while the consumer is in its step (loader/ahead.py): a consumer that
sleeps between batches, as one waiting on its GPU, gets the same batches, errors and endings
as one that does not, and whatever ends its iteration stops the thread and the workers."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import fastload
from fastload.errors import WorkerDiedError

from .loadertools import SlowDataset, assert_same, check_batch, wait_for

STEP = 0.002  # the consumer's step: long enough to be seen as one (ahead.AWAY_SECONDS)


def reading_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fastload-batches"]


def stepped(it, count: int | None = None, step: float = STEP):
    """Up to ``count`` batches of ``it``, with a sleeping step before each."""
    out = []
    while count is None or len(out) < count:
        time.sleep(step)
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def loader_of(ds, **kw) -> fastload.DataLoader:
    options = dict(batch_size=4, shuffle=True, seed=3, num_workers=2)
    return fastload.DataLoader(ds, **{**options, **kw})


def test_a_stepping_consumer_gets_the_same_batches(ds, no_leaks):
    plain = list(loader_of(ds))
    loader = loader_of(ds)
    it = iter(loader)
    first = stepped(it, 6)
    assert reading_threads(), "a consumer with a step has its batches received ahead"
    rest = stepped(it)
    assert len(first) + len(rest) == len(plain) == 25
    for j, (a, b) in enumerate(zip(plain, first + rest, strict=True)):
        check_batch(b)
        assert_same(a, b, f"batch {j}")
    assert wait_for(reading_threads, 5) == []  # the epoch's end stopped the thread
    loader.close()


def test_a_consumer_without_a_step_starts_no_thread(ds1):
    loader = loader_of(ds1)
    assert len(list(loader)) == 25
    assert reading_threads() == []
    loader.close()


class FailingDataset(fastload.Dataset):
    """The index dataset, but reading a batch that holds record ``bad`` raises."""

    def __init__(self, path, bad: int) -> None:
        super().__init__(path)
        self.bad = bad

    def read_into(self, indices, out=None):
        if self.bad in list(np.asarray(indices)):
            raise ValueError(f"record {self.bad} is bad")
        return super().read_into(indices, out)


def test_a_failed_batch_is_raised_by_its_own_next(ds_paths, no_leaks):
    loader = fastload.DataLoader(
        FailingDataset(ds_paths["none"], bad=41), batch_size=4, num_workers=2
    )
    it = iter(loader)
    got = []
    for _ in range(25):
        time.sleep(STEP)
        try:
            got.append(check_batch(next(it))[0])
        except ValueError as e:
            assert "record 41 is bad" in str(e)
            got.append("failed")
    assert next(it, None) is None
    assert got == [4 * j if j != 10 else "failed" for j in range(25)]
    loader.close()


@pytest.mark.parametrize("persistent", [False, True])
def test_a_worker_killed_during_the_step_is_reported(ds_paths, persistent, no_leaks):
    loader = fastload.DataLoader(
        SlowDataset(ds_paths["none"], delay=0.01),
        batch_size=2,
        num_workers=2,
        persistent_workers=persistent,
    )
    it = iter(loader)
    stepped(it, 4)
    assert reading_threads()
    os.kill(loader._pool.workers[1].pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="SIGKILL"):
        stepped(it)
    assert time.monotonic() - start < 5
    assert next(it, None) is None
    assert wait_for(reading_threads, 5) == []
    assert [check_batch(b) for b in loader][-1] == [98, 99]  # a new iteration starts afresh
    loader.close()


@pytest.mark.parametrize("persistent", [False, True])
def test_leaving_while_the_thread_waits_on_a_hung_worker(ds_paths, persistent, no_leaks):
    # Batch 6 (records 12, 13) never comes: the thread waits on the workers for it when the
    # consumer leaves the loop. Closing must not wait for it.
    loader = fastload.DataLoader(
        SlowDataset(ds_paths["none"], hang_on=12, hang=60),
        batch_size=2,
        num_workers=2,
        persistent_workers=persistent,
    )
    it = iter(loader)
    assert [check_batch(b) for b in stepped(it, 5)][-1] == [8, 9]
    time.sleep(0.3)  # the thread is waiting for batch 6 by now
    start = time.monotonic()
    del it
    loader.close()
    assert time.monotonic() - start < 8  # (a join without the interrupt would take 10 s)
    assert wait_for(reading_threads, 5) == []


def test_persistent_workers_go_on_after_a_break(ds, no_leaks):
    loader = loader_of(ds, persistent_workers=True)
    want = [list(loader) for _ in range(3)]
    fresh = loader_of(ds, persistent_workers=True)
    it = iter(fresh)
    stepped(it, 7)  # the thread has batches ready beyond these, dropped by the break
    got = []
    for _ in range(2):  # epochs 1 and 2 on the same workers, with a step
        got.append(stepped(iter(fresh)))
    for e, (a, b) in enumerate(zip(want[1:], got, strict=True)):
        assert len(a) == len(b) == 25
        assert_same(a, b, f"epoch {e + 1}")
    loader.close()
    fresh.close()


def test_resuming_from_a_state_saved_while_batches_were_ready(ds, no_leaks):
    whole = list(loader_of(ds))
    first = loader_of(ds)
    it = iter(first)
    stepped(it, 9)
    time.sleep(0.05)  # the thread readies the next batches, which the user has not had
    state = first.state_dict()
    first.close()
    second = loader_of(ds)
    second.load_state_dict(state)
    rest = stepped(iter(second))
    assert len(rest) == len(whole) - 9
    for j, (a, b) in enumerate(zip(whole[9:], rest, strict=True)):
        assert_same(a, b, f"batch {9 + j}")
    second.close()
