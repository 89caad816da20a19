"""Errors and liveness (docs/reliability.md C1-C11): worker exceptions re-raise in the consumer with
their traceback, dead and hung workers are reported in seconds, and every way out of an epoch
(end, break, del, an exception, the main process killed) leaves no process and nothing in
/dev/shm behind."""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import fastload
from fastload.errors import CorruptRecordError
from fastload.loader import LoaderTimeoutError, WorkerDiedError
from fastload.loader.fastpath import Workers
from tests.childenv import child_env
from tests.format.formattools import parse_shard

from .loadertools import (
    SlowDataset,
    alive,
    check_batch,
    shm_listing,
    wait_gone,
    worker_pids,
)

pytestmark = pytest.mark.timeout(60)


def corrupt_copy(src: Path, dst: Path, shard: int = 2, record: int = 1) -> int:
    """A copy of the dataset at ``src`` with one byte of one record (uncompressed) or of its
    block (zstd) flipped; returns the dataset index of the damaged record."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    path = dst / m["shards"][shard]["path"]
    data = bytearray(path.read_bytes())
    parsed = parse_shard(bytes(data))
    rec = parsed["records"][record]
    block = parsed["blocks"][rec["block"]]
    if block["codec"] == 0:
        data[block["offset"] + rec["offset"] + rec["length"] // 2] ^= 0xFF
    else:
        data[block["offset"] + block["stored_size"] // 2] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))
    return sum(s["records"] for s in m["shards"][:shard]) + record


# ----------------------------------------------------------------------------- C1: exceptions


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize(
    "num_workers,worker_type,persistent",
    [(0, "process", False), (2, "process", False), (2, "thread", False), (2, "process", True)],
)
def test_c1_corrupt_record_reraises_with_worker_traceback(
    ds_paths, tmp_path, compression, num_workers, worker_type, persistent, no_leaks
):
    bad = corrupt_copy(ds_paths[compression], tmp_path / "bad")
    ds = fastload.Dataset(tmp_path / "bad")
    loader = fastload.DataLoader(
        ds,
        batch_size=4,
        num_workers=num_workers,
        worker_type=worker_type,
        persistent_workers=persistent,
    )
    delivered = []
    with pytest.raises(CorruptRecordError) as info:
        for b in loader:
            delivered.append(check_batch(b))
    text = str(info.value)
    assert "shard-00002" in text and "checksum" in text
    # in order: every batch before the bad one was delivered, none after
    assert delivered == [list(range(k, k + 4)) for k in range(0, bad - bad % 4, 4)]
    if num_workers:
        assert re.search(
            r"Caught CorruptRecordError in fastload worker [01] \(pid \d+\) "
            f"while loading batch {bad // 4} ",
            text,
        )
        assert "Traceback (most recent call last)" in text and "read_into" in text
        assert f"dataset indices [{bad - bad % 4}, " in text and str(bad) in text
    # the loader is still usable afterwards (a new epoch, a new error, same batches first)
    again = []
    with pytest.raises(CorruptRecordError):
        for b in loader:
            again.append(check_batch(b))
    assert again == delivered
    if persistent:
        pids = worker_pids(loader)
        assert all(alive(p) for p in pids)  # an error in a read does not cost the workers
        loader.close()
    del loader
    ds.close()


class Boom(Exception):
    """An exception class the consumer can import."""


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


class RaisingDataset(fastload.Dataset):
    def __init__(self, path, error):
        super().__init__(path)
        self.error = error

    def read_into(self, indices, out=None):
        if 13 in list(indices):
            raise self.error
        return super().read_into(indices, out)


@pytest.mark.parametrize(
    "error,cls",
    [(Boom("boom!"), Boom), (KeyError("k"), KeyError), (NeedsTwoArgs(1, 2), RuntimeError)],
)
def test_c1_exception_classes(ds_paths, error, cls):
    ds = RaisingDataset(ds_paths["none"], error)
    loader = fastload.DataLoader(ds, batch_size=5, num_workers=2)
    with pytest.raises(cls) as info:
        list(loader)
    assert "fastload worker" in str(info.value) and type(error).__name__ in str(info.value)


def _raising_init(worker_id):
    if worker_id == 1:
        raise Boom(f"init of worker {worker_id} failed")


def _hanging_init(worker_id):
    time.sleep(3600)


@pytest.mark.parametrize("worker_type", ["process", "thread"])
@pytest.mark.parametrize("persistent", [False, True])
def test_c2_worker_init_fn_raising(ds1, worker_type, persistent, no_leaks):
    loader = fastload.DataLoader(
        ds1,
        batch_size=5,
        num_workers=2,
        worker_type=worker_type,
        worker_init_fn=_raising_init,
        persistent_workers=persistent,
    )
    start = time.monotonic()
    with pytest.raises(Boom, match="init of worker 1 failed") as info:
        list(loader)
    assert time.monotonic() - start < 10
    assert "worker_init_fn" in str(info.value) and "fastload worker 1" in str(info.value)
    loader.close()


# ----------------------------------------------------------------------------- C3: killed worker


@pytest.mark.parametrize(
    "method,persistent", [("fork", False), ("fork", True), ("forkserver", False)]
)
def test_c3_killed_worker_is_reported(ds_paths, method, persistent, no_leaks):
    ds = SlowDataset(ds_paths["none"], delay=0.03)
    loader = fastload.DataLoader(
        ds,
        batch_size=2,
        num_workers=2,
        persistent_workers=persistent,
        multiprocessing_context=method,
    )
    it = iter(loader)
    check_batch(next(it))
    victim = loader._pool.workers[1]
    os.kill(victim.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        for b in it:
            check_batch(b)
    assert time.monotonic() - start < 5
    text = str(info.value)
    assert "worker 1" in text and str(victim.pid) in text and "SIGKILL" in text
    # the batches it had, by number and dataset indices (batch j holds records 2j, 2j + 1)
    assert info.value.batches and all(
        list(indices) == [2 * j, 2 * j + 1] for j, indices in info.value.batches.items()
    )
    j = min(info.value.batches)
    assert f"while loading batch {j} (dataset indices [{2 * j}, {2 * j + 1}])" in text
    assert next(it, None) is None  # the iteration is over
    del it
    # the loader is not: a new iteration starts afresh (persistent workers too)
    assert [check_batch(b) for b in loader][-1] == [98, 99]
    loader.close()


# ----------------------------------------------------------------------- C4: crash in native code


class CrashingDataset(fastload.Dataset):
    """Reading a batch that holds record ``crash_on`` dereferences NULL in C (SIGSEGV), as a
    bug in compiled code would."""

    crash_on = 7

    def read_into(self, indices, out=None, **kw):
        if self.crash_on in [int(i) for i in indices]:
            import ctypes

            ctypes.string_at(0)
        return super().read_into(indices, out, **kw)


@pytest.mark.parametrize("persistent", [False, True])
def test_c4_a_worker_crashing_in_native_code_is_reported(ds_paths, persistent, no_leaks):
    loader = fastload.DataLoader(
        CrashingDataset(ds_paths["none"]),
        batch_size=2,
        num_workers=2,
        persistent_workers=persistent,
    )
    start = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        for b in loader:
            assert 7 not in check_batch(b)
    assert time.monotonic() - start < 5
    assert re.search(
        r"fastload worker [01] \(pid \d+\) was killed by signal 11 \(SIGSEGV\)", str(info.value)
    ), str(info.value)
    assert "batch 3 (dataset indices [6, 7])" in str(info.value)  # the batch that crashed it
    assert list(info.value.batches[3]) == [6, 7]
    loader.close()


# ----------------------------------------------------------------------------- C5: hung worker


@pytest.mark.parametrize("how", ["init", "read"])
@pytest.mark.parametrize("persistent", [False, True])
def test_c5_hung_worker_times_out(ds_paths, how, persistent, no_leaks):
    if how == "init":
        ds, init = fastload.Dataset(ds_paths["none"]), _hanging_init
    else:
        ds, init = SlowDataset(ds_paths["none"], hang_on=10), None
    loader = fastload.DataLoader(
        ds,
        batch_size=4,
        num_workers=2,
        timeout=1,
        worker_init_fn=init,
        persistent_workers=persistent,
    )
    start = time.monotonic()
    with pytest.raises(LoaderTimeoutError, match="timed out after 1 seconds") as info:
        for b in loader:
            check_batch(b)
    assert time.monotonic() - start < 5
    assert isinstance(LoaderTimeoutError("x"), RuntimeError)  # what torch raises
    # the batch waited for, and the worker that had it (read: batch 2 holds record 10)
    j = 0 if how == "init" else 2
    want = f"waiting for batch {j} (dataset indices [{4 * j}, {4 * j + 1}, {4 * j + 2}, "
    assert want in str(info.value) and "from fastload worker 0 (pid" in str(info.value)
    assert list(info.value.batches[j]) == list(range(4 * j, 4 * j + 4))
    loader.close()


def test_c5_hung_thread_worker_times_out(ds_paths, release_threads):
    ds = SlowDataset(ds_paths["none"], hang_on=10, releasable=True)
    loader = fastload.DataLoader(ds, batch_size=4, num_workers=2, timeout=1, worker_type="thread")
    start = time.monotonic()
    with pytest.raises(LoaderTimeoutError):
        list(loader)
    assert time.monotonic() - start < 8


# ----------------------------------------------------------------------------- C7: clean exits


def _leave_by(how: str, loader) -> None:
    if how == "end":
        list(loader)
    elif how == "break":
        for k, _b in enumerate(loader):
            if k == 3:
                break
    elif how == "del":
        it = iter(loader)
        next(it)
        next(it)
        del it
    elif how == "raise":
        with pytest.raises(ZeroDivisionError):
            for k, _b in enumerate(loader):
                if k == 3:
                    raise ZeroDivisionError("in the training loop")
    elif how == "del_loader":  # the loader and its iterator dropped together mid-epoch
        it = iter(loader)
        next(it)
        return it


@pytest.mark.parametrize(
    "how,method",
    [("end", "fork"), ("break", "fork"), ("del", "fork"), ("raise", "fork"), ("break", "spawn")],
)
def test_c7_leaving_an_epoch_reaps_workers(ds_paths, how, method, no_leaks, monkeypatch):
    ds = SlowDataset(ds_paths["none"], delay=0.002)
    loader = fastload.DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context=method)
    shm = shm_listing()
    pids: list[int] = []
    orig = Workers.ready

    def spy(self, *args):
        pool = orig(self, *args)
        pids.extend(w.pid for w in pool.workers if w.pid not in pids)
        return pool

    monkeypatch.setattr(Workers, "ready", spy)
    _leave_by(how, loader)
    gc.collect()
    assert len(pids) == 2
    assert wait_gone(pids, 5) == []
    assert not [p for p in multiprocessing.active_children() if p.pid in pids]
    assert shm_listing() <= shm
    # and the loader works again afterwards
    assert [check_batch(b) for b in loader][-1] == [98, 99]


@pytest.mark.parametrize("how", ["end", "break", "raise"])
def test_c10_persistent_workers_live_until_close(ds_paths, how, no_leaks):
    ds = SlowDataset(ds_paths["none"], delay=0.002)
    loader = fastload.DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    _leave_by(how, loader)
    pids = worker_pids(loader)
    assert all(alive(p) for p in pids)
    assert [check_batch(b) for b in loader][-1] == [98, 99]
    assert worker_pids(loader) == pids
    loader.close()
    assert wait_gone(pids, 5) == []


def test_c10_dropping_a_persistent_loader_reaps_workers(ds1, no_leaks):
    loader = fastload.DataLoader(ds1, batch_size=2, num_workers=2, persistent_workers=True)
    it = _leave_by("del_loader", loader)
    pids = worker_pids(loader)
    del loader, it
    gc.collect()
    assert wait_gone(pids, 5) == []


# ----------------------------------------------------------------------------- C6: main killed

_CHILD = textwrap.dedent("""
    import sys, time
    import fastload
    from tests.loader.loadertools import SlowDataset
    ds = SlowDataset({path!r}, delay=0.01) if not {big!r} else fastload.Dataset({path!r})
    loader = fastload.DataLoader(ds, batch_size={batch_size!r}, num_workers=2, prefetch_factor=4,
                                 multiprocessing_context={method!r},
                                 persistent_workers={persistent!r}, worker_type="process")
    it = iter(loader)
    next(it)
    print(" ".join(str(w.pid) for w in loader._pool.workers), flush=True)
    time.sleep(600)
""")


@pytest.fixture(scope="module")
def big_records(tmp_path_factory) -> Path:
    """Records whose str field is 50 kB: a few batches of them fill a pipe."""
    path = tmp_path_factory.mktemp("big") / "ds"
    with fastload.Writer(
        path, {"i": "int64", "s": "str"}, shard_size="1MB", block_size="64KB", compression="none"
    ) as w:
        for i in range(400):
            w.write({"i": i, "s": str(i % 10) * 50_000})
    return path


@pytest.mark.parametrize(
    "method,persistent,big",
    [
        ("fork", False, False),
        ("fork", True, False),
        ("forkserver", True, False),
        # workers with results the dead consumer will never read (more than a pipe holds)
        ("fork", False, True),
    ],
)
def test_c6_killing_the_main_process_leaves_no_orphans(
    ds_paths, big_records, method, persistent, big
):
    shm = shm_listing()
    path = big_records if big else ds_paths["none"]
    code = _CHILD.format(
        path=str(path),
        method=method,
        persistent=persistent,
        big=big,
        batch_size=16 if big else 2,
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        line = child.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, line
        assert all(alive(p) for p in pids)
        if big:
            time.sleep(1)  # let the workers fill the pipes
    finally:
        child.kill()
        child.wait()
    assert wait_gone(pids, 5) == []
    assert shm_listing() <= shm


# ------------------------------------------------- C3, C5 on the general path (torch's iterators)


class KillsItsWorker(torch.utils.data.Dataset):
    """i -> i; reading ``kill_on`` the first time (a marker file says it was) kills the
    worker process that reads it (SIGKILL, as the OOM killer would)."""

    def __init__(self, n: int, kill_on: int, marker: str, sleep_on: int = -1) -> None:
        self.n, self.kill_on, self.marker, self.sleep_on = n, kill_on, marker, sleep_on

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i == self.kill_on and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        if i == self.sleep_on and not os.path.exists(self.marker):
            Path(self.marker).touch()
            time.sleep(30)
        return i


@pytest.mark.parametrize("persistent", [False, True])
def test_c3_general_path_worker_death_names_the_batch_and_the_loader_goes_on(
    tmp_path, persistent, no_leaks
):
    ds = KillsItsWorker(20, kill_on=7, marker=str(tmp_path / "killed"))
    loader = fastload.DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=persistent)
    seen = []
    with pytest.raises(WorkerDiedError) as info:
        for b in loader:
            seen.append(b.tolist())
    assert seen == [[2 * j, 2 * j + 1] for j in range(len(seen))]
    ((j, indices),) = info.value.batches.items()
    assert j == len(seen) and indices == [2 * j, 2 * j + 1]  # the batch next() waited for
    assert f"while loading batch {j} (dataset indices [{2 * j}, {2 * j + 1}])" in str(info.value)
    assert "exited unexpectedly" in str(info.value)  # torch's own words, kept
    assert [b.tolist() for b in loader] == [[2 * j, 2 * j + 1] for j in range(10)]
    loader.close()


def test_c5_general_path_timeout_names_the_batch(tmp_path, no_leaks):
    ds = KillsItsWorker(20, kill_on=-1, sleep_on=9, marker=str(tmp_path / "slept"))
    loader = fastload.DataLoader(ds, batch_size=2, num_workers=2, timeout=1)
    with pytest.raises(LoaderTimeoutError) as info:
        for _ in loader:
            pass
    assert "timed out after 1 seconds waiting for batch 4 (dataset indices [8, 9])" in str(
        info.value
    )
    assert info.value.batches == {4: [8, 9]}
    assert len(list(loader)) == 10  # a new iteration: new workers
    loader.close()
