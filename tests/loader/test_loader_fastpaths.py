"""The loader's fast paths for small batches: the flat message encoding between consumer and
workers (messages.py) and the batched gather for local uncompressed datasets (read/gather.py).
Each must give exactly what the general path gives, and step aside for anything unusual."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fastload
from fastload.errors import CorruptRecordError
from fastload.loader import fill
from fastload.loader.fill import BatchTimings, fill_batch
from fastload.loader.layout import BatchLayout
from fastload.loader.messages import (
    RESULTS,
    TASKS,
    WorkerError,
    decode,
    encode_results,
    encode_tasks,
)
from fastload.loader.messages import BatchResult as Result
from fastload.loader.messages import BatchTask as Task
from fastload.loader.pool import WorkerPool
from fastload.loader.splits import SHARED_BLOCKS
from fastload.read.gather import RawGather, ResidentGather
from tests.format.formattools import parse_shard

pytestmark = pytest.mark.timeout(120)

FIXED = {"i": "int64", "tokens": "uint16[33]", "x": "float32[2]"}


def fixed_record(i: int) -> dict:
    return {
        "i": i,
        "tokens": ((np.arange(33) * 7 + i) % 65536).astype(np.uint16),
        "x": np.array([i, -i], np.float32),
    }


def write_fixed(path: Path, n: int = 200, compression: str = "none") -> Path:
    # small shards: a batch usually spans several of them
    with fastload.Writer(
        path, FIXED, shard_size=1200, block_size=400, compression=compression
    ) as w:
        for i in range(n):
            w.write(fixed_record(i))
    return path


def check_fixed(batch: dict, indices) -> None:
    want = [fixed_record(int(i)) for i in indices]
    assert batch["i"].tolist() == [int(i) for i in indices]
    assert np.array_equal(batch["tokens"].numpy(), np.stack([r["tokens"] for r in want]))
    assert np.array_equal(batch["x"].numpy(), np.stack([r["x"] for r in want]))


# ----------------------------------------------------------------------------- messages


def test_tasks_round_trip_flat():
    tasks = [
        Task(7, 3, np.array([5, 1, 9], np.int64), (2**64 - 1, 0)),
        Task(8, 0, np.array([], np.int64), (0, 12345)),
        Task(9, 11, np.arange(16), (2**63, 2)),
        Task(9, 11, np.arange(16), (2**63, 2), part=1, parts=3),  # shares travel flat
        Task(9, 11, np.arange(16), (2**63, 2), part=2, parts=3, split=SHARED_BLOCKS.code),
    ]
    data = encode_tasks(tasks)
    assert data[:4] == TASKS
    got = decode(data)

    def fields(t):
        return (t.batch, t.slab, t.rng_seed, t.new_slab, t.part, t.parts, t.split)

    assert [fields(t) for t in got] == [fields(t) for t in tasks]
    for a, b in zip(got, tasks):
        assert a.indices.dtype == np.int64 and a.indices.tolist() == list(b.indices)
    assert all(type(x) is int for t in got for x in (t.batch, t.slab, *t.rng_seed))


@pytest.mark.parametrize(
    "tasks",
    [
        None,
        [Task(0, 0, np.arange(3), (-1, 2))],  # a seed that is not in [0, 2**64)
        [Task(0, 0, np.arange(3), (2**64, 2))],
        [Task(0, 0, np.arange(3), (1, 2, 3))],  # not two words
        [Task(0, 0, np.arange(3), (1, 2), new_slab=("arena", (0, 64)))],  # a slab handle
    ],
)
def test_tasks_fall_back_to_pickle(tasks):
    data = encode_tasks(tasks)
    assert data[:4] != TASKS
    got = decode(data)
    if tasks is None:
        assert got is None
    else:
        assert got[0].rng_seed == tasks[0].rng_seed and got[0].new_slab == tasks[0].new_slab
        assert (got[0].part, got[0].parts) == (tasks[0].part, tasks[0].parts)


def test_results_round_trip_flat_and_pickled():
    plain = [
        Result(4, 2, 16, {}, BatchTimings(read=0.25, decode=1e-3, bytes=65568, decompressed=3)),
        Result(5, 0, 3, {}, BatchTimings(read=0.0, decode=0.0, bytes=0, decompressed=0)),
        Result(
            6,
            1,
            0,
            {},
            BatchTimings(read=0.0, decode=0.0, bytes=0, decompressed=1),
            part=1,
            parts=2,
        ),
    ]
    data = encode_results(plain)
    assert data[:4] == RESULTS
    got = decode(data)
    for a, b in zip(got, plain):
        assert (a.batch, a.slab, a.samples, a.listed, a.error, a.part, a.parts) == (
            b.batch,
            b.slab,
            b.samples,
            {},
            None,
            b.part,
            b.parts,
        )
        assert dict(a.timings) == dict(b.timings)
    error = WorkerError("ValueError", "builtins", "bad", "tb", 1, 2, "here")
    for odd in (
        [Result(1, 1, error=error)],
        [Result(1, 1, 2, {"s": ["a", "b"]}, BatchTimings(read=0, decode=0, bytes=0))],
        [Result(1, 1, 2, {}, BatchTimings(read=0, decode=0, bytes=0, decompressed=0, io={"n": 1}))],
        [Result(1, 1, 2, {}, BatchTimings(read=0, decode=0, bytes=0), bad=[(1, "x")])],
    ):
        data = encode_results(odd)
        assert data[:4] != RESULTS
        back = decode(data)[0]
        assert (
            back.error,
            back.listed,
            dict(back.timings or {}),
            back.part,
            back.parts,
            back.bad,
        ) == (
            odd[0].error,
            odd[0].listed,
            dict(odd[0].timings or {}),
            odd[0].part,
            odd[0].parts,
            odd[0].bad,
        )


# ----------------------------------------------------------------------------- RawGather


@pytest.fixture(scope="module")
def fixed_path(tmp_path_factory) -> Path:
    return write_fixed(tmp_path_factory.mktemp("fixed") / "ds")


def test_raw_gather_used_only_where_it_applies(fixed_path, tmp_path):
    ds = fastload.Dataset(fixed_path)
    assert len(ds.shards) > 2
    assert isinstance(RawGather.build(ds, BatchLayout(ds.schema, 8).gathered), RawGather)
    zstd = fastload.Dataset(write_fixed(tmp_path / "z", compression="zstd"))
    assert RawGather.build(zstd, BatchLayout(zstd.schema, 8).gathered) is None
    with fastload.Writer(tmp_path / "v", {"i": "int64", "s": "str"}) as w:
        w.write({"i": 1, "s": "a"})
    listed = fastload.Dataset(tmp_path / "v")
    assert fill._raw_gather(listed, BatchLayout(listed.schema, 8)) is None


def test_raw_gather_equals_read_into(fixed_path):
    ds = fastload.Dataset(fixed_path)
    layout = BatchLayout(ds.schema, 16)
    rng = np.random.default_rng(0)
    for n in (1, 5, 16):
        idx = rng.integers(0, len(ds), n)
        fast = np.zeros(layout.slab_size, np.uint8)
        listed, timings = fill_batch(ds, layout, fast, idx, (0, 0))
        assert listed == {} and set(timings) == {"read", "decode", "bytes", "decompressed"}
        ref = {k: np.zeros_like(v) for k, v in layout.views(fast, n).items()}
        assert ds.read_into(idx, out=ref) == {}
        for name, view in layout.views(fast, n).items():
            assert np.array_equal(view, ref[name])
        check_fixed({k: torch.from_numpy(v) for k, v in layout.views(fast, n).items()}, idx)
    assert fill._raw_gather(ds, layout) is not None  # the fast path did those batches


def test_thread_workers_each_have_their_resident_gather(fixed_path, tmp_path):
    """A ResidentGather's blocks at hand change with each batch: shared by thread workers,
    one swapped its tables under another's core call (a TypeError from gather_records,
    seen in a thread-worker test). Each thread has its own; RawGather, read-only, is one."""
    import threading

    with fastload.Writer(tmp_path / "z", {"x": "int32[256]"}, compression="zstd") as w:
        for i in range(500):
            w.write({"x": np.full(256, i, np.int32)})  # compresses: read decompressed
    raw, zstd = fastload.Dataset(fixed_path), fastload.Dataset(tmp_path / "z")
    layouts = {ds: BatchLayout(ds.schema, 8) for ds in (raw, zstd)}
    got = {}

    def build(name):
        for ds, layout in layouts.items():
            got[name, ds] = fill._raw_gather(ds, layout)

    for name in ("a", "b"):
        t = threading.Thread(target=build, args=(name,))
        t.start()
        t.join()
    assert isinstance(got["a", raw], RawGather) and got["a", raw] is got["b", raw]
    assert isinstance(got["a", zstd], ResidentGather)
    assert got["a", zstd] is not got["b", zstd]
    assert fill._raw_gather(zstd, layouts[zstd]) is fill._raw_gather(zstd, layouts[zstd])


def test_raw_gather_leaves_errors_to_read_into(fixed_path, tmp_path):
    ds = fastload.Dataset(fixed_path)
    layout = BatchLayout(ds.schema, 4)
    slab = np.zeros(layout.slab_size, np.uint8)
    with pytest.raises(IndexError):
        fill_batch(ds, layout, slab, np.array([0, len(ds)]), (0, 0))
    # every other index of a longer array (not contiguous), and a plain list
    every_other = np.arange(12, dtype=np.int64)[::3]
    for indices in (every_other, every_other.tolist()):
        fill_batch(ds, layout, slab, indices, (0, 0))
        check_fixed(
            {k: torch.from_numpy(v) for k, v in layout.views(slab, 4).items()}, [0, 3, 6, 9]
        )
    # negative indices count from the end, as in read_into
    fill_batch(ds, layout, slab, np.array([-1, 0]), (0, 0))
    check_fixed(
        {k: torch.from_numpy(v) for k, v in layout.views(slab, 2).items()}, [len(ds) - 1, 0]
    )
    # a damaged record: the same CorruptRecordError as the general path
    bad_path = tmp_path / "bad"
    shutil.copytree(fixed_path, bad_path)
    m = json.loads((bad_path / "manifest.json").read_text())
    shard = bad_path / m["shards"][1]["path"]
    data = bytearray(shard.read_bytes())
    parsed = parse_shard(bytes(data))
    rec, block = parsed["records"][2], parsed["blocks"][parsed["records"][2]["block"]]
    data[block["offset"] + rec["offset"] + rec["length"] // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = m["shards"][0]["records"] + 2
    bad_ds = fastload.Dataset(bad_path)
    with pytest.raises(CorruptRecordError, match="checksum"):
        fill_batch(bad_ds, layout, slab, np.array([0, bad]), (0, 0))
    fill_batch(bad_ds, layout, slab, np.array([0, bad + 1]), (0, 0))  # its neighbours are fine


@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "process"), (2, "thread")])
def test_loader_over_fixed_fields_matches_torch_order(fixed_path, num_workers, worker_type):
    ds = fastload.Dataset(fixed_path)
    loader = fastload.DataLoader(
        ds,
        batch_size=16,
        shuffle=True,
        num_workers=num_workers,
        worker_type=worker_type,
        generator=torch.Generator().manual_seed(3),
    )
    order = [
        b.tolist()
        for b in torch.utils.data.DataLoader(
            range(len(ds)), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3)
        )
    ]
    got = 0
    for batch, want in zip(loader, order):
        check_fixed(batch, want)
        got += 1
    assert got == len(order) == len(loader)
    stats = loader.stats()
    assert stats["samples"] == len(ds) and stats["stage_seconds"]["read"] > 0


def _anon_mb() -> float:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Anonymous:")) / 1024


def _big_buffers_come_back(worker_id: int) -> None:
    """In a worker: buffers of tens of MB, freed, go back to the system (glibc would keep
    them as idle heap after the first one: a batch's worth of memory per worker)."""
    base = _anon_mb()
    for _ in range(3):
        buf = np.ones(30 << 17)  # 30 MiB of float64
        del buf
    kept = _anon_mb() - base
    if kept > 8:
        raise AssertionError(f"worker {worker_id} kept {kept:.0f} MB of freed buffers")


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_process_workers_return_big_freed_buffers(tmp_path):
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the setting is glibc's")
    ds = fastload.Dataset(write_fixed(tmp_path / "ds", 20))
    loader = fastload.DataLoader(
        ds, batch_size=5, num_workers=1, worker_init_fn=_big_buffers_come_back
    )
    assert sum(len(b["i"]) for b in loader) == 20


def test_a_slow_consumer_still_gets_whole_messages(tmp_path, monkeypatch):
    """A consumer slower than its workers frees slabs one batch at a time; the loader waits
    until a whole message's slabs are free instead of waking a worker for each batch."""
    ds = fastload.Dataset(write_fixed(tmp_path / "ds", n=2400))
    sizes: list[int] = []  # tasks per message, as sent
    send = WorkerPool.submit

    def counted(self, worker, tasks, slabs):
        sizes.append(len(tasks))
        return send(self, worker, tasks, slabs)

    monkeypatch.setattr(WorkerPool, "submit", counted)
    loader = fastload.DataLoader(ds, batch_size=4, num_workers=2)
    assert loader._per_message == 16
    for k, batch in enumerate(loader):
        check_fixed(batch, range(4 * k, 4 * k + 4))
        time.sleep(0.001)
    assert k == 599
    # From the first whole message on (the first few are sized up from one batch) to the
    # last whole one (the epoch's tail is what is left), messages are whole.
    first, last = sizes.index(16), len(sizes) - 1 - sizes[::-1].index(16)
    steady = sizes[first : last + 1]
    assert sum(n == 16 for n in steady) >= 0.9 * len(steady), sizes
