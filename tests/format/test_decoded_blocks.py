"""Decompressed blocks kept in memory: the byte bound, LRU order, sharing, fork and pickle;
and a compressed dataset read at random decompressing each block once while it fits."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import numpy as np
import pytest

import fastload
from fastload.format.decoded import DecodedBlocks

from .formattools import write_compressed_rows


def test_bound_in_bytes_least_recently_used_dropped_first():
    cache = DecodedBlocks(limit=30)
    for k in "abc":
        cache.put(k, bytes(10))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", bytes(10))
    assert cache.bytes == 30 and len(cache) == 3
    assert cache.peek("b") is None  # the least recently used went
    assert [cache.peek(k) is not None for k in "acd"] == [True, True, True]
    assert (cache.hits, cache.misses) == (1, 0)
    assert cache.get("b") is None and cache.misses == 1


def test_a_block_larger_than_the_limit_is_not_kept():
    cache = DecodedBlocks(limit=8)
    cache.put("small", bytes(8))
    cache.put("big", bytes(9))
    assert cache.peek("big") is None and cache.peek("small") is not None and cache.bytes == 8
    zero = DecodedBlocks(limit=0)
    zero.put("x", bytes(1))
    assert len(zero) == 0 and zero.bytes == 0


def test_negative_limit_refused():
    with pytest.raises(ValueError, match="block_cache"):
        DecodedBlocks(-1)


def test_pickles_as_its_limit_only():
    cache = DecodedBlocks(limit=100)
    cache.put("a", bytes(10))
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.limit == 100 and len(copy) == 0 and copy.bytes == 0


def _child_reads(cache: DecodedBlocks, out) -> None:
    out.put((cache.get("a") is not None, cache.get("zz") is None))


def test_a_forked_child_keeps_the_blocks_and_does_not_inherit_a_held_lock():
    cache = DecodedBlocks(limit=100)
    cache.put("a", b"x" * 10)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    with cache._lock:  # another thread of the parent holds it at the fork
        child = ctx.Process(target=_child_reads, args=(cache, out))
        child.start()
    child.join(20)
    assert child.exitcode == 0, "the child hung on (or died from) the parent's lock"
    assert out.get(timeout=5) == (True, True)


def test_a_compressed_dataset_read_at_random_decompresses_each_block_once(tmp_path):
    rows = write_compressed_rows(tmp_path / "z", 600)
    ds = fastload.Dataset(tmp_path / "z")
    blocks = sum(s.blocks for s in ds.shards)
    assert ds.manifest.bytes < 0.9 * sum(s.raw_bytes for s in ds.shards)  # it compressed
    order = np.random.default_rng(0).permutation(len(ds))
    block_of = ds.shard_reader(0).index.entries()["block"]
    lookups = 0  # a batch looks each of its blocks up once
    for k in range(0, len(order), 16):
        batch = ds.get_batch(order[k : k + 16])
        np.testing.assert_array_equal(batch["tokens"], rows[order[k : k + 16]])
        lookups += len(set(block_of[order[k : k + 16]].tolist()))
    assert ds._decoded.misses == blocks  # each block decompressed once, then kept
    assert ds._decoded.hits == lookups - blocks
    ds.close()
    assert len(ds._decoded) == 0  # close lets them go


def test_a_small_block_cache_stays_within_its_bytes_and_reads_the_same(tmp_path):
    """Without decompressed copies on disk (cache_dir=False), blocks stay in memory."""
    rows = write_compressed_rows(tmp_path / "z", 600)
    # two blocks of ~8 KiB
    ds = fastload.Dataset(tmp_path / "z", block_cache="20KiB", cache_dir=False)
    order = np.random.default_rng(1).permutation(len(ds))
    for i in order[:200].tolist():
        np.testing.assert_array_equal(ds[i]["tokens"], rows[i])
        assert ds._decoded.bytes <= 20 * 1024
    assert 0 < len(ds._decoded) <= 2
    assert ds._decoded.misses > 100  # random reads over 75 blocks mostly miss two
    none = fastload.Dataset(tmp_path / "z", block_cache=0, cache_dir=False)
    for i in order[:20].tolist():
        np.testing.assert_array_equal(none[i]["tokens"], rows[i])
    assert len(none._decoded) == 0 and none._decoded.misses == 20


def test_bad_block_cache_size_refused(tmp_path):
    write_compressed_rows(tmp_path / "z", 8)
    with pytest.raises(ValueError, match="not a size"):
        fastload.Dataset(tmp_path / "z", block_cache="lots")


def test_a_block_larger_than_max_block_bytes_is_refused_before_decompressing(tmp_path):
    """docs/reliability.md A11: the decompressed size a block declares is checked against a cap the
    user sets, before anything is allocated for it; raw blocks are mapped, not allocated."""
    rows = write_compressed_rows(tmp_path / "z", 64)  # blocks of 8 rows: 8 KiB decompressed
    ds = fastload.Dataset(tmp_path / "z", max_block_bytes="4KiB")
    with pytest.raises(
        fastload.errors.ShardFormatError,
        match=r"block 0 would decompress to 8,192 bytes, more than "
        r"max_block_bytes=4,096",
    ):
        ds[0]
    assert ds._decoded.misses == 1 and len(ds._decoded) == 0
    np.testing.assert_array_equal(
        fastload.Dataset(tmp_path / "z", max_block_bytes="8KiB")[9]["tokens"], rows[9]
    )
    with pytest.raises(ValueError, match="not a size"):
        fastload.Dataset(tmp_path / "z", max_block_bytes="big")


def test_threads_asking_for_one_block_have_it_made_once():
    import threading
    import time

    cache = DecodedBlocks(limit=1 << 20)
    made = []

    def make() -> bytes:
        made.append(threading.get_ident())
        time.sleep(0.05)  # the others ask meanwhile
        return b"block"

    got = []
    threads = [
        threading.Thread(target=lambda: got.append(cache.get_or_make("k", make))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == [b"block"] * 8 and len(made) == 1
    assert (cache.misses, cache.hits) == (1, 7) and cache.take_decompressed() == 1


def test_when_the_thread_making_a_block_fails_the_others_make_it_themselves():
    import threading
    import time

    cache = DecodedBlocks(limit=1 << 20)
    calls = []

    def make() -> bytes:
        calls.append(None)
        if len(calls) == 1:
            time.sleep(0.05)
            raise ValueError("corrupt block")
        return b"ok"

    results = []

    def ask() -> None:
        try:
            results.append(cache.get_or_make("k", make))
        except ValueError as e:
            results.append(str(e))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(10)
    assert sorted(map(repr, results)) == sorted(map(repr, ["corrupt block", b"ok", b"ok"]))
    assert len(calls) == 2  # the failure, then one more make for both waiters


def test_thread_workers_decompress_each_block_once(tmp_path):
    write_compressed_rows(tmp_path / "z", 480)  # 60 blocks of 8 rows
    for shuffle in (False, True, "block"):
        ds = fastload.Dataset(tmp_path / "z", cache_dir=False)
        loader = fastload.DataLoader(
            ds, batch_size=4, shuffle=shuffle, seed=0, num_workers=2, worker_type="thread"
        )
        assert sum(len(b["tokens"]) for b in loader) == 480
        assert loader.stats()["decompressed_blocks"] == 60, shuffle


class _Store:
    """A CopyStore in memory: what DecodedBlocks asks of one."""

    def __init__(self, room: bool = True) -> None:
        self.copies: dict = {}
        self.room = room

    def get(self, key):
        return self.copies.get(key)

    def put(self, key, raw):
        if not self.room:
            return None
        self.copies[key] = memoryview(bytes(raw))
        return self.copies[key]


def test_with_a_copy_store_a_block_is_made_once_and_then_mapped():
    store = _Store()
    made = []
    first = DecodedBlocks(limit=1 << 20, mapped=2)
    first.attach(store)
    for key in "abc":
        assert bytes(first.get_or_make(key, lambda k=key: made.append(k) or k.encode())) == (
            key.encode()
        )
    assert made == ["a", "b", "c"] and first.bytes == 0  # nothing held in memory
    assert first.dropped == 1 and first.peek("a") is None  # 2 kept mapped: a let go
    other = DecodedBlocks(limit=1 << 20)  # another process, the same store
    other.attach(store)
    assert bytes(other.get_or_make("a", lambda: made.append("again") or b"?")) == b"a"
    assert made == ["a", "b", "c"] and other.copies_mapped == 1 and other.misses == 0
    assert other.take_decompressed() == 0 and first.take_decompressed() == 3


def test_a_block_the_store_cannot_take_stays_in_memory():
    cache = DecodedBlocks(limit=1 << 20)
    cache.attach(_Store(room=False))
    assert cache.get_or_make("a", lambda: b"x" * 10) == b"x" * 10
    assert cache.bytes == 10 and cache.peek("a") == b"x" * 10
