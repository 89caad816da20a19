"""Decompressed copies of compressed blocks on local disk (fastload.read.copies): each block is
decompressed once for every process and epoch that uses the same cache directory, a damaged
copy is found and made again, the copies stay within the cache's byte limit, and the batches
are those of a dataset read without them."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fastload
from fastload.errors import CorruptRecordError
from fastload.loader.splits import SHARED_BLOCKS, WHOLE_BATCHES
from tests.format.formattools import parse_shard, write_compressed_rows


@pytest.fixture
def compressed(tmp_path):
    path = tmp_path / "z"
    return path, write_compressed_rows(path, 480)  # 60 blocks of 8 rows, 8 KiB decompressed


def copies_in(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.blk"))


def epochs(ds, workers: int, n: int = 3, **kwargs) -> tuple[list[np.ndarray], list[int]]:
    """``n`` epochs of a shuffled loader: their rows, and the blocks decompressed in each."""
    loader = fastload.DataLoader(
        ds, batch_size=16, shuffle=True, seed=3, num_workers=workers, **kwargs
    )
    rows, made = [], []
    for _ in range(n):
        before = loader.stats()["decompressed_blocks"]
        rows.append(torch.cat([b["tokens"] for b in loader]).numpy())
        made.append(loader.stats()["decompressed_blocks"] - before)
    loader.close()
    return rows, made


@pytest.mark.parametrize("workers,persistent", [(0, False), (2, False), (2, True)])
def test_each_block_is_decompressed_once_then_read_from_its_copy(
    compressed, tmp_path, workers, persistent
):
    path, rows = compressed
    cache = tmp_path / "cache"
    ds = fastload.Dataset(path, cache_dir=cache, block_cache=0)  # nothing kept in memory
    got, made = epochs(ds, workers, persistent_workers=persistent)
    blocks = sum(s.blocks for s in ds.shards)
    # Two workers may meet a block at the same moment early on: a few made twice, at most.
    assert blocks <= made[0] <= blocks + 8
    assert made[1:] == [0, 0]  # every later epoch, in fresh workers too, maps the copies
    assert len(copies_in(cache)) == blocks
    plain, _ = epochs(fastload.Dataset(path, cache_dir=False), 0)
    for a, b in zip(got, plain, strict=True):
        np.testing.assert_array_equal(a, b)  # the same batches as without copies
    assert sorted(map(bytes, got[0])) == sorted(map(bytes, rows))


def test_workers_read_whole_batches_when_the_copies_fit(compressed, tmp_path):
    path, _ = compressed
    fits = fastload.Dataset(path, cache_dir=tmp_path / "c")
    assert fits.storage()[0].copied
    assert fastload.DataLoader(fits, batch_size=8, num_workers=2)._split is WHOLE_BATCHES
    small = fastload.Dataset(path, cache_dir=tmp_path / "c", cache_limit="100KiB")
    assert not small.storage()[0].copied  # 480 KiB decompressed
    with pytest.warns(UserWarning, match=r"a cache_limit of at least 480.0 KiB"):
        loader = fastload.DataLoader(
            fastload.Dataset(path, cache_dir=tmp_path / "c", cache_limit="100KiB", block_cache=0),
            batch_size=8,
            shuffle=True,
            num_workers=2,
        )
    assert loader._split is SHARED_BLOCKS
    none = fastload.Dataset(path, cache_dir=False)
    assert not none.storage()[0].copied and none.storage()[0].copy_limit == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastload.DataLoader(fits, batch_size=8, shuffle=True, num_workers=2)  # no warning


def test_no_copies_without_a_cache_dir(compressed, tmp_path, monkeypatch):
    path, rows = compressed
    monkeypatch.setenv("FASTLOAD_CACHE_DIR", str(tmp_path / "default"))
    ds = fastload.Dataset(path, cache_dir=False)
    np.testing.assert_array_equal(ds.get_batch(np.arange(480))["tokens"], rows)
    assert not (tmp_path / "default").exists()
    default = fastload.Dataset(path)  # the default directory, as for remote blocks
    np.testing.assert_array_equal(default.get_batch(np.arange(480))["tokens"], rows)
    assert len(copies_in(tmp_path / "default")) == 60


_READ_ALL = """
import sys, numpy as np, fastload
ds = fastload.Dataset(sys.argv[1], cache_dir=sys.argv[2], block_cache=0)
loader = fastload.DataLoader(ds, batch_size=16, shuffle=True, seed=1, num_workers=2)
rows = np.concatenate([b["tokens"].numpy() for b in loader])
print(loader.stats()["decompressed_blocks"], int(rows.astype(np.uint64).sum()))
"""


def test_loaders_in_other_processes_share_the_copies(compressed, tmp_path):
    """Three loaders, each its own process with two workers, one after the other and then
    two at once, on one cache directory: the first decompresses the blocks, the others
    read its copies."""
    path, rows = compressed
    cache = tmp_path / "cache"

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", _READ_ALL, str(path), str(cache)],
            stdout=subprocess.PIPE,
            text=True,
        )

    def result(proc: subprocess.Popen) -> tuple[int, int]:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        made, total = map(int, out.split())
        return made, total

    first = result(start())
    assert 60 <= first[0] <= 68 and first[1] == int(rows.astype(np.uint64).sum())
    both = [result(p) for p in [start(), start()]]
    assert [made for made, _ in both] == [0, 0]
    assert {total for _, total in both} == {first[1]}


def test_a_damaged_copy_is_found_and_made_again(compressed, tmp_path):
    path, rows = compressed
    cache = tmp_path / "cache"
    fastload.Dataset(path, cache_dir=cache).get_batch(np.arange(480))  # every block copied
    copies = copies_in(cache)
    assert len(copies) == 60
    victim = copies[7]
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x40
    victim.write_bytes(bytes(data))
    ds = fastload.Dataset(path, cache_dir=cache, block_cache=0)
    before = ds.io_stats()["cache_corrupt"]
    for workers in (0, 2):
        got, made = epochs(ds, workers, n=1)
        assert sorted(map(bytes, got[0])) == sorted(map(bytes, rows))
        assert made == [1 if workers == 0 else 0]  # made again once, then read from its copy
    assert ds.io_stats()["cache_corrupt"] == before + 1
    assert all(p.read_bytes() != bytes(data) for p in copies_in(cache))  # replaced


def test_a_damaged_copy_another_process_stored_first_is_not_trusted(compressed, tmp_path):
    """A process that decompressed a block and finds it stored already (by another process,
    between its own look and its write) checks that copy before it maps it: a bad one is
    deleted, and the block it decompressed is used instead."""
    from fastload.read.copies import DecompressedCopies

    path, rows = compressed
    cache = tmp_path / "cache"
    fastload.Dataset(path, cache_dir=cache).get_batch(np.arange(480))  # every block copied
    ds = fastload.Dataset(path, cache_dir=cache, block_cache=0)
    reader = ds.shard_reader(0)
    store = DecompressedCopies(ds, str(cache), "1GB")
    good = store.get((0, 3))
    assert good is not None and bytes(good) == bytes(reader.block(3))
    made = bytes(good)  # what this process decompressed, from the checked shard
    copies = copies_in(cache)
    victim = next(p for p in copies if p.read_bytes() == made)
    damaged = bytearray(made)
    damaged[len(damaged) // 2] ^= 0x10
    planted = tmp_path / "planted"  # a new file renamed in: copies are never written in place
    planted.write_bytes(bytes(damaged))
    planted.replace(victim)
    before = ds.io_stats()["cache_corrupt"]
    assert store.put((0, 3), made) is None  # not mapped: the caller keeps its own bytes
    assert ds.io_stats()["cache_corrupt"] == before + 1 and not victim.exists()
    view = store.put((0, 3), made)  # stored anew, by this process: handed out unchecked
    assert view is not None and bytes(view) == made and victim.read_bytes() == made
    np.testing.assert_array_equal(ds.get_batch(np.arange(480))["tokens"], rows)


def test_a_damaged_shard_still_raises_naming_its_block(compressed, tmp_path):
    import shutil

    path, rows = compressed
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    shard = next(bad.glob("*.fls"))
    data = bytearray(shard.read_bytes())
    block = parse_shard(bytes(data))["blocks"][12]  # records 96..103
    data[block["offset"] + block["stored_size"] // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    loader = fastload.DataLoader(
        fastload.Dataset(bad, cache_dir=tmp_path / "cache"), batch_size=16, num_workers=2
    )
    for _ in range(2):  # the other blocks' copies in the cache change nothing
        delivered = []
        with pytest.raises(CorruptRecordError) as info:
            for b in loader:
                delivered.append(b["tokens"].numpy())
        assert "block 12" in str(info.value) and "records 96..103" in str(info.value)
        np.testing.assert_array_equal(np.concatenate(delivered), rows[:96])


def test_copies_stay_within_the_cache_limit(compressed, tmp_path):
    from fastload.io.cache import BlockCache

    path, rows = compressed
    cache = tmp_path / "cache"
    limit = 20 * 8192  # 20 of the 60 blocks
    ds = fastload.Dataset(path, cache_dir=cache, cache_limit=limit, block_cache=0)
    order = np.random.default_rng(0).permutation(480)
    for k in range(0, 480, 16):
        np.testing.assert_array_equal(
            ds.get_batch(order[k : k + 16])["tokens"], rows[order[k : k + 16]]
        )
        assert sum(p.stat().st_size for p in copies_in(cache)) <= limit
    assert 0 < len(copies_in(cache)) <= 20
    assert BlockCache(cache, limit).usage() <= limit
    again = fastload.Dataset(path, cache_dir=cache, cache_limit=limit, block_cache=0)
    np.testing.assert_array_equal(again.get_batch(order)["tokens"], rows[order])


def test_a_shard_rewritten_in_place_does_not_read_old_copies(tmp_path):
    path, cache = tmp_path / "z", tmp_path / "cache"
    write_compressed_rows(path, 64)
    fastload.Dataset(path, cache_dir=cache).get_batch(np.arange(64))
    with fastload.Writer(
        path, {"tokens": "uint16[512]"}, block_size=8192, compression="zstd", overwrite=True
    ) as w:
        new = np.full((64, 512), 7, np.uint16)
        for row in new:
            w.write({"tokens": row})
    np.testing.assert_array_equal(
        fastload.Dataset(path, cache_dir=cache).get_batch(np.arange(64))["tokens"], new
    )


_DIE_AT_RENAME = """
import os, sys, numpy as np, fastload, fastload.io.cache as c
real = os.replace
def dying(src, dst):
    if dst.endswith(".blk"):
        os._exit(9)  # written to its temporary file, not renamed into place yet
    return real(src, dst)
c.os.replace = dying
fastload.Dataset(sys.argv[1], cache_dir=sys.argv[2], block_cache=0).get_batch(np.arange(480))
"""


def test_a_crash_while_writing_a_copy_leaves_no_partial_copy(compressed, tmp_path):
    from fastload.io.cache import LAYOUT

    path, rows = compressed
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-c", _DIE_AT_RENAME, str(path), str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert copies_in(cache) == []  # nothing under a name a reader would map
    assert len(list((cache / LAYOUT / "tmp").glob("*.part"))) == 1
    ds = fastload.Dataset(path, cache_dir=cache, block_cache=0)
    before = ds.io_stats()["cache_corrupt"]
    np.testing.assert_array_equal(ds.get_batch(np.arange(480))["tokens"], rows)
    assert list((cache / LAYOUT / "tmp").glob("*.part")) == []  # the dead one's, removed
    assert len(copies_in(cache)) == 60
    assert ds.io_stats()["cache_corrupt"] == before
