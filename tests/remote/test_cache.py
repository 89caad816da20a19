"""The local block cache: its byte limit, eviction order, safety across processes and crashes,
checks of cached copies, and ``fastload cache``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fastload
from fastload.cli import main as cli_main
from fastload.format.checksum import hash64
from fastload.io.cache import LAYOUT, BlockCache
from tests.childenv import child_env
from tests.format.formattools import assert_record, index_record, write_index_dataset

pytestmark = [pytest.mark.remote, pytest.mark.timeout(120)]

N = 400


@pytest.fixture(scope="module")
def s3_ds(s3_server, tmp_path_factory) -> str:
    local = write_index_dataset(
        tmp_path_factory.mktemp("cache") / "ds", N, block_size=1000, shard_size=6000
    )
    url = f"{s3_server.new_bucket()}/ds"
    s3_server.fs().put(str(local), url.split("://", 1)[1], recursive=True)
    return url


def blk_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / LAYOUT / "shards").glob("*/*.blk"))


def blk_bytes(cache_dir: Path) -> int:
    total = 0
    for p in blk_files(cache_dir):
        try:
            total += p.stat().st_size
        except FileNotFoundError:  # evicted meanwhile (read-ahead runs in the background)
            pass
    return total


# -- the cache on its own ---------------------------------------------------------------------
def put(cache: BlockCache, offset: int, data: bytes, url="s3://b/ds/s.fls", **kw) -> bool:
    time.sleep(0.02)  # file times tick in jiffies: keep the test's order visible to LRU
    return cache.put(url, "xxh64:0", 1 << 30, offset, data, **kw)


def get(cache: BlockCache, offset: int, data: bytes, url="s3://b/ds/s.fls"):
    time.sleep(0.02)
    return cache.get(url, "xxh64:0", 1 << 30, offset, len(data), hash64(data))


def test_limit_and_eviction_order(tmp_path):
    cache = BlockCache(tmp_path, limit=10_000)
    blocks = {o: os.urandom(3000) for o in (0, 3000, 6000, 9000, 12000)}
    assert put(cache, 0, blocks[0])  # consumed (fetched for use)
    assert put(cache, 3000, blocks[3000], ahead=True)  # read-ahead, not consumed yet
    assert put(cache, 6000, blocks[6000])
    assert cache.usage() == 9000
    assert put(cache, 9000, blocks[9000])  # over the limit: consumed blocks go first
    assert cache.usage() <= 10_000
    assert get(cache, 0, blocks[0]) is None  # the least recently consumed
    assert get(cache, 3000, blocks[3000]) == blocks[3000]  # read-ahead kept
    assert get(cache, 6000, blocks[6000]) == blocks[6000]
    assert put(cache, 12000, blocks[12000])  # 6000 and 9000 were consumed; 3000 just now
    assert get(cache, 3000, blocks[3000]) == blocks[3000]
    assert get(cache, 9000, blocks[9000]) is None
    assert not put(cache, 20_000, os.urandom(20_000))  # larger than the whole cache
    assert cache.usage() <= 10_000


def test_mapped_copies_hold_no_open_file_and_outlive_eviction(tmp_path):
    """A process keeps up to 1024 cached blocks mapped: each map holding a file open (as
    mmap.mmap's does) reached the usual limit of 1024 open files."""
    cache = BlockCache(tmp_path, limit=1 << 20)
    blocks = {o: os.urandom(100) for o in range(0, 20_000, 100)}
    for o, data in blocks.items():
        cache.put("s3://b/ds/s.fls", "xxh64:0", 1 << 30, o, data)
    before = len(os.listdir("/proc/self/fd"))
    views = {
        o: cache.get("s3://b/ds/s.fls", "xxh64:0", 1 << 30, o, 100, hash64(d))
        for o, d in blocks.items()
    }
    assert len(os.listdir("/proc/self/fd")) == before
    assert all(
        isinstance(v, memoryview) and v.readonly and v == blocks[o] for o, v in views.items()
    )
    cache.clear()  # the files go; the maps stay readable
    assert blk_files(tmp_path) == [] and all(v == blocks[o] for o, v in views.items())


def test_names_stay_inside_the_cache(tmp_path):
    cache = BlockCache(tmp_path / "c", limit="1MB")
    for url in ("s3://b/../../../etc/passwd", "/abs/path", "gs://b/a/../../x\n.blk"):
        assert put(cache, 0, b"x" * 10, url=url)
    root = (tmp_path / "c" / LAYOUT).resolve()
    files = [p for p in (tmp_path).rglob("*") if p.is_file()]
    assert all(root in p.resolve().parents for p in files), files
    assert {e.url for e in cache.entries()} >= {"s3://b/../../../etc/passwd", "/abs/path"}


def test_corrupt_or_short_copy_is_dropped(tmp_path):
    cache = BlockCache(tmp_path, limit="1MB")
    data = os.urandom(5000)
    assert put(cache, 0, data)
    (path,) = blk_files(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    assert get(cache, 0, data) is None and not path.exists()
    assert put(cache, 0, data)
    path.write_bytes(data[:100])  # truncated under the final name
    assert get(cache, 0, data) is None and not path.exists()


def test_put_mapped_hands_its_writer_the_copy_it_stored(tmp_path):
    """The writer of a copy gets it mapped from the file it wrote (no second open); a block
    stored already, or one without room, is not stored again and no map is handed out (the
    caller then reads, and checks, what is there)."""
    cache = BlockCache(tmp_path, limit=10_000)
    data = os.urandom(3000)
    view = cache.put_mapped("s3://b/ds/s.fls", "xxh64:0", 1 << 30, 0, data)
    assert isinstance(view, memoryview) and view.readonly and view == data
    (path,) = blk_files(tmp_path)
    assert path.read_bytes() == data and cache.usage() == 3000
    other = BlockCache(tmp_path, limit=10_000)  # another process's view of the directory
    assert other.put_mapped("s3://b/ds/s.fls", "xxh64:0", 1 << 30, 0, os.urandom(3000)) is None
    assert path.read_bytes() == data  # the first copy stands
    assert cache.put_mapped("s3://b/ds/s.fls", "xxh64:0", 1 << 30, 3000, os.urandom(20_000)) is None
    assert blk_files(tmp_path) == [path]
    assert list((tmp_path / LAYOUT / "tmp").iterdir()) == []  # no temporary file left behind
    other.clear()  # its directory goes while `cache` still knows it
    assert view == data  # the map outlives its file
    again = cache.put_mapped("s3://b/ds/s.fls", "xxh64:0", 1 << 30, 6000, data)
    assert again == data and len(blk_files(tmp_path)) == 1 and cache.usage() == 3000


def test_clear_deletes_only_cache_files(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    cache = BlockCache(tmp_path, limit="1MB")
    assert put(cache, 0, b"a" * 100, url="s3://one/x")
    assert put(cache, 0, b"b" * 100, url="s3://two/x")
    key_dir = blk_files(tmp_path)[0].parent
    (key_dir / "notes.txt").write_text("also mine")
    assert cache.clear("s3://one/") == 100
    assert [e.url for e in cache.entries()] == ["s3://two/x"]
    stale = tmp_path / LAYOUT / "locks" / "abc-0.lock"
    stale.write_bytes(b"")  # a fetch claim left by a crashed process
    assert cache.clear() == 100 and blk_files(tmp_path) == [] and not stale.exists()
    assert precious.read_text() == "mine"
    assert any(p.name == "notes.txt" for p in tmp_path.rglob("notes.txt"))


def flock_free(path: Path) -> bool:
    import fcntl

    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@pytest.mark.skipif(sys.platform == "win32", reason="fork and flock are POSIX")
def test_a_child_forked_while_a_lock_is_held_does_not_keep_it(tmp_path):
    """A loader worker forked while a fetch thread held the cache lock (or a fetch claim)
    must not keep it: the flock lives on the open file the child shares, the thread that
    would close it does not exist there, and every process using the cache would wait
    forever."""
    import fcntl
    import multiprocessing
    import threading

    cache = BlockCache(tmp_path, limit="1MB")
    claim = cache.claim("s3://b/x", "xxh64:0", 100, 0)
    held, done = threading.Event(), threading.Event()

    def hold():
        with cache._locked():
            held.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()

    def child_main():
        started.set()  # past fork's hooks: the child's copies are closed, or never will be
        time.sleep(60)

    child = ctx.Process(target=child_main)
    child.start()  # forked while both are held
    try:
        assert started.wait(30)
        done.set()
        holder.join(30)
        assert flock_free(tmp_path / LAYOUT / "lock")
        with open(claim[1], "rb") as waiter:  # opened by a process waiting for the block
            cache.release(claim)
            fcntl.flock(waiter, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
        assert child.is_alive()  # the child's copies would still be open now
    finally:
        child.kill()
        child.join(30)


# -- through Dataset ------------------------------------------------------------------------
def test_dataset_never_exceeds_the_limit(s3_server, s3_ds, tmp_path):
    limit = 12_000  # a fraction of the dataset (~65 KB)
    with fastload.Dataset(
        s3_ds, storage_options=s3_server.storage_options, cache_dir=tmp_path, cache_limit=limit
    ) as ds:
        order = np.random.default_rng(1).permutation(N)
        for k, i in enumerate(order):
            assert_record(ds[int(i)], index_record(int(i)))
            if k % 20 == 0:
                assert blk_bytes(tmp_path) <= limit
        for start in range(0, N, 50):
            idx = order[start : start + 50]
            assert ds.get_batch(idx)["i"].tolist() == idx.tolist()
            assert blk_bytes(tmp_path) <= limit
        assert ds.io_stats()["cache_evicted_bytes"] > 0
    assert blk_bytes(tmp_path) <= limit


def test_corrupted_cache_file_is_detected_and_refetched(s3_server, s3_ds, tmp_path):
    opts = dict(storage_options=s3_server.storage_options, cache_dir=tmp_path)
    with fastload.Dataset(s3_ds, **opts) as ds:
        for i in range(N):
            ds[i]
    files = [p for p in blk_files(tmp_path) if not p.name.startswith("0-")]  # blocks, not
    assert len(files) > 10  # the shards' header+index copies (small shards: at offset 0)
    for p in files[::3]:
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        p.write_bytes(bytes(raw))
    with fastload.Dataset(s3_ds, **opts) as ds:
        before = ds.io_stats()
        for i in range(N):
            assert_record(ds[i], index_record(i), i)
        after = ds.io_stats()
        assert after["cache_corrupt"] - before["cache_corrupt"] == len(files[::3])
    with fastload.Dataset(s3_ds, **opts) as ds:  # refetched copies are good
        before = ds.io_stats()["cache_corrupt"]
        for i in range(N):
            ds[i]
        assert ds.io_stats()["cache_corrupt"] == before


def test_bad_cached_index_is_refetched(s3_server, s3_ds, tmp_path):
    opts = dict(storage_options=s3_server.storage_options, cache_dir=tmp_path)
    with fastload.Dataset(s3_ds, **opts) as ds:
        ds[0]
        info = ds.shards[0]
    # The first shard is small: its whole file is the cached "tail" region, at offset 0.
    (tail,) = [p for p in blk_files(tmp_path) if p.name == f"0-{info.bytes}.blk"]
    raw = bytearray(tail.read_bytes())
    raw[-70] ^= 0xFF  # inside the index
    tail.write_bytes(bytes(raw))
    with fastload.Dataset(s3_ds, **opts) as ds:
        before = ds.io_stats()
        assert_record(ds[0], index_record(0))
        assert ds.io_stats()["requests"] > before["requests"]
    with fastload.Dataset(s3_ds, **opts) as ds:  # the good copy was stored again
        before = ds.io_stats()
        assert_record(ds[0], index_record(0))
        assert ds.io_stats()["requests"] == before["requests"]


READER = textwrap.dedent("""
    import sys, json, numpy as np
    import fastload
    from tests.format.formattools import assert_record, index_record
    opts = json.loads(sys.argv[1])
    ds = fastload.Dataset(sys.argv[2], storage_options=opts, cache_dir=sys.argv[3],
                          cache_limit=int(sys.argv[4]))
    {patch}
    order = np.random.default_rng(int(sys.argv[5])).permutation(len(ds))
    for i in order:
        assert_record(ds[int(i)], index_record(int(i)), int(i))
    for start in range(0, len(ds), 40):
        idx = order[start:start + 40]
        assert ds.get_batch(idx)["i"].tolist() == idx.tolist()
    print("ok", ds.io_stats()["cache_hits"])
""")


def run_readers(s3_server, url, cache_dir, limit, seeds, patch=""):
    import json

    code = READER.format(patch=patch)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                json.dumps(s3_server.storage_options),
                url,
                str(cache_dir),
                str(limit),
                str(seed),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for seed in seeds
    ]
    return [(p.wait(timeout=100), *p.communicate()) for p in procs]


def test_concurrent_processes_share_one_cache(s3_server, s3_ds, tmp_path):
    limit = 30_000
    results = run_readers(s3_server, s3_ds, tmp_path, limit, seeds=[1, 2, 3])
    for rc, out, err in results:
        assert rc == 0 and out.startswith("ok"), err[-3000:]
    assert blk_bytes(tmp_path) <= limit
    assert list((tmp_path / LAYOUT / "tmp").iterdir()) == []
    with fastload.Dataset(
        s3_ds, storage_options=s3_server.storage_options, cache_dir=tmp_path, cache_limit=limit
    ) as ds:
        before = ds.io_stats()["cache_corrupt"]
        for i in range(N):
            assert_record(ds[i], index_record(i))
        assert ds.io_stats()["cache_corrupt"] == before


def test_crash_mid_download_leaves_nothing_used(s3_server, s3_ds, tmp_path):
    # The process dies after writing a block's temporary file, before renaming it into place.
    patch = textwrap.dedent("""
    import os, fastload.io.cache as c
    real = os.replace
    def dying(src, dst):
        if dst.endswith(".blk"):
            os._exit(9)
        return real(src, dst)
    c.os.replace = dying
    """)
    ((rc, out, err),) = run_readers(s3_server, s3_ds, tmp_path, 1 << 20, seeds=[4], patch=patch)
    assert rc == 9, err[-3000:]
    assert blk_files(tmp_path) == []  # nothing under a used name
    assert len(list((tmp_path / LAYOUT / "tmp").glob("*.part"))) >= 1
    with fastload.Dataset(
        s3_ds, storage_options=s3_server.storage_options, cache_dir=tmp_path, cache_limit=1 << 20
    ) as ds:
        assert list((tmp_path / LAYOUT / "tmp").glob("*.part")) == []  # the dead one's, removed
        before = ds.io_stats()["cache_corrupt"]
        for i in range(N):
            assert_record(ds[i], index_record(i))
        assert ds.io_stats()["cache_corrupt"] == before


def test_cache_cli(s3_server, s3_ds, tmp_path, capsys):
    with fastload.Dataset(
        s3_ds, storage_options=s3_server.storage_options, cache_dir=tmp_path
    ) as ds:
        ds.get_batch(range(N))
    assert cli_main(["cache", "ls", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{s3_ds}/shard-00000.fls" in out and "blocks" in out
    assert (
        cli_main(
            ["cache", "clear", "--cache-dir", str(tmp_path), "--url", f"{s3_ds}/shard-00000.fls"]
        )
        == 0
    )
    assert "removed" in capsys.readouterr().out
    assert cli_main(["cache", "ls", "--cache-dir", str(tmp_path), "--json"]) == 0
    import json

    listed = json.loads(capsys.readouterr().out)
    urls = [o["url"] for o in listed["objects"]]
    assert urls and f"{s3_ds}/shard-00000.fls" not in urls
    assert cli_main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert blk_files(tmp_path) == []
    assert cli_main(["cache", "ls", "--cache-dir", str(tmp_path / "none")]) == 0
    with pytest.raises(SystemExit):
        cli_main(["cache", "--help"])


def test_unusable_default_cache_dir_warns_and_reads_on(s3_server, s3_ds, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FASTLOAD_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="no block cache"):
        ds = fastload.Dataset(s3_ds, storage_options=s3_server.storage_options)
    with ds:
        assert ds.cache is None
        assert_record(ds[9], index_record(9))
    with pytest.raises(OSError):  # but a directory asked for by name must work
        fastload.Dataset(
            s3_ds, storage_options=s3_server.storage_options, cache_dir=blocker / "cache"
        )
