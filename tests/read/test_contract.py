"""The read layer's contract (fastload.read.Readable): what Dataset and Mix offer the loader,
and the version that tells holders of views when they went stale."""

from __future__ import annotations

import inspect
import os
import pickle
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

import fastload
from fastload.read import Readable, Storage
from fastload.read.gather import RawGather, ResidentGather

SCHEMA = {"i": "int64", "x": "float32[4]"}


def record(i: int) -> dict:
    return {"i": i, "x": np.full(4, i, np.float32)}


def write(path: Path | str, n: int, compression: str = "none", start: int = 0) -> Path:
    # small shards and blocks: a batch spans several of each (zstd's blocks large enough to
    # compress well)
    block = 400 if compression == "none" else 4000
    with fastload.Writer(
        path, SCHEMA, shard_size=5 * block, block_size=block, compression=compression
    ) as w:
        for i in range(start, start + n):
            w.write(record(i))
    return path


@pytest.fixture(scope="module")
def raw_path(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("raw") / "ds", 200)


@pytest.fixture(scope="module")
def zstd_path(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("zstd") / "ds", 1500, "zstd", start=1000)


def contract_members() -> list[str]:
    """The names Readable declares: its attributes and its methods."""
    declared = set(Readable.__annotations__)
    declared |= {
        name
        for name, value in vars(Readable).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }
    return sorted(declared | {"__len__"})


@pytest.mark.parametrize("kind", ["dataset", "mix"])
def test_dataset_and_mix_have_every_member_of_the_contract(kind, raw_path, zstd_path):
    ds = fastload.Dataset(raw_path)
    subject = ds if kind == "dataset" else fastload.Mix([ds, fastload.Dataset(zstd_path)])
    members = contract_members()
    assert {"schema", "remote", "read_into", "fast_gather", "prefetch"} <= set(members)
    assert {"prepare_workers", "version", "storage", "block_numbers"} <= set(members)
    for name in members:
        assert hasattr(subject, name), name
        declared = getattr(Readable, name, None)
        if inspect.isfunction(declared):  # same parameters, by name
            want = list(inspect.signature(declared).parameters)
            assert list(inspect.signature(getattr(subject, name)).parameters) == want[1:], name


def test_storage_facts(raw_path, zstd_path):
    raw, zstd = fastload.Dataset(raw_path), fastload.Dataset(zstd_path, block_cache="1MiB")
    (r,) = raw.storage()
    assert isinstance(r, Storage) and r.name == raw.path and r.records == len(raw)
    assert r.blocks == sum(s.blocks for s in raw.shards) and not r.compressed
    (z,) = zstd.storage()
    assert z.compressed and z.stored_bytes < z.raw_bytes and z.block_cache == 1 << 20
    assert fastload.Mix([raw, zstd]).storage() == [r, z]


def test_block_sizes_and_numbers_agree(raw_path, zstd_path):
    raw, zstd = fastload.Dataset(raw_path), fastload.Dataset(zstd_path)
    for subject in (raw, zstd, fastload.Mix([raw, zstd])):
        sizes = subject.block_sizes()
        records = len(raw) + len(zstd) if isinstance(subject, fastload.Mix) else len(subject)
        assert sizes.sum() == records
        numbers = subject.block_numbers(np.arange(records))
        assert np.array_equal(numbers, np.repeat(np.arange(len(sizes)), sizes))


def test_version_goes_up_when_held_views_may_be_stale(zstd_path):
    # a few blocks at a time, in memory (no copies on disk, which are not let go this way)
    ds = fastload.Dataset(zstd_path, block_cache="12KiB", cache_dir=False)
    seen = [ds.version]

    def moved() -> bool:
        seen.append(ds.version)
        return seen[-1] > seen[-2]

    ds.block_table()
    ds.read_into(np.arange(10))  # a shard opened
    assert moved()
    ds.read_into(np.arange(10))  # nothing new: the same views hold
    assert not moved()
    ds.read_into(np.arange(len(ds)))  # more blocks than the cache keeps: some dropped
    assert moved()
    ds.close()
    assert moved()


def test_a_forked_child_of_a_remote_dataset_counts_the_parents_views_stale():
    """A remote dataset's forked child starts its store afresh (the parent's connections and
    threads are not its own): what the parent held counts as stale there."""
    url = f"memory://fastload-test-{uuid.uuid4().hex}/ds"
    write(url, 100)
    ds = fastload.Dataset(url)
    assert ds.remote
    ds.read_into(np.arange(len(ds)))
    mine = ds.version
    pid = os.fork()
    if pid == 0:
        os._exit(0 if ds.version > mine else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert ds.version == mine  # the parent's own are as they were
    copy = pickle.loads(pickle.dumps(ds))  # (another process's copy counts for itself)
    assert copy.read_into([3])["i"].tolist() == [3]
    ds.close()
    fsspec.filesystem("memory").rm(url.split("://")[1].rsplit("/", 1)[0], recursive=True)


def test_mix_version_and_counters_sum_its_datasets(raw_path, zstd_path):
    raw, zstd = fastload.Dataset(raw_path), fastload.Dataset(zstd_path)
    mix = fastload.Mix([raw, zstd])
    assert mix.version == raw.version + zstd.version
    assert not mix.remote and mix.prefetch(np.arange(10)) == 0  # local: nothing to fetch
    assert mix.prepare_workers() == 0 and mix.io_stats_delta() == {}
    mix.take_decompressed()
    got = mix.read_into(np.arange(len(raw), len(raw) + 20))  # zstd's records: decompressed
    assert got["i"].tolist() == list(range(1000, 1020))
    assert mix.take_decompressed() > 0 and mix.take_decompressed() == 0
    assert mix.fast_gather(("i",)) is None  # a Mix reads with read_into


def test_fast_gathers_handed_out(raw_path, zstd_path):
    raw, zstd = fastload.Dataset(raw_path), fastload.Dataset(zstd_path)
    first = raw.fast_gather(("i", "x"))
    assert isinstance(first, RawGather) and raw.fast_gather(("i", "x")) is first  # shared
    a, b = zstd.fast_gather(("i", "x")), zstd.fast_gather(("i", "x"))
    assert isinstance(a, ResidentGather) and a is not b  # one per thread that asks
    idx = np.array([3, 140, 0, 77], np.int64) % len(zstd)
    out = {"i": np.zeros(4, np.int64), "x": np.zeros((4, 4), np.float32)}
    zstd.read_into(np.arange(len(zstd)))  # every block at hand
    assert a.gather(idx, out) and out["i"].tolist() == (idx + 1000).tolist()
    assert raw.fast_gather(("i", "nope")) is None  # not a fixed-size field

    class Sub(fastload.Dataset):  # its own read_into is the read it asked for
        pass

    assert Sub(raw_path).fast_gather(("i",)) is None
