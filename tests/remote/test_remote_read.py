"""Reading datasets from S3 (moto) and GCS (emulator) on loopback: ranged reads of blocks,
read-ahead, retries under injected faults, and the errors that must not be retried."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import fastload
from fastload.errors import MissingShardError
from fastload.io.remote import RemoteOptions
from fastload.io.retry import RemoteAccessError, RemoteReadError, RetryPolicy
from tests.format.formattools import assert_record, index_bytes, index_record, write_index_dataset

pytestmark = [pytest.mark.remote, pytest.mark.timeout(120)]

N = 400
FAST_RETRY = RetryPolicy(attempts=6, base_s=0.01, cap_s=0.1, budget_s=20)
# Opening a shard fetches its last 256 KiB, which holds all of these tests' small shards (and
# caches their blocks); with a 1 KiB tail, blocks are fetched as a large shard's are.
SMALL_TAIL = RemoteOptions(tail_bytes=1024)


@pytest.fixture(scope="module")
def local_ds(tmp_path_factory) -> Path:
    # ~20 KB shards of ~2 KB blocks: many shards and blocks, little data.
    return write_index_dataset(
        tmp_path_factory.mktemp("remote") / "ds", N, block_size=1000, shard_size=6000
    )


def upload(server, local: Path) -> str:
    """``local`` copied into a fresh bucket; returns the dataset's URL."""
    url = f"{server.new_bucket()}/ds"
    server.fs().put(str(local), url.split("://", 1)[1], recursive=True)
    return url


@pytest.fixture(scope="module")
def s3_ds(s3_server, local_ds) -> str:
    return upload(s3_server, local_ds)


def delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def check_all(ds, n=N):
    for i in range(n):
        assert_record(ds[i], index_record(i), i)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_every_record_and_batch_then_warm_cache(kind, request, local_ds, tmp_path):
    server = request.getfixturevalue(f"{kind}_server")
    url = upload(server, local_ds)
    opts = dict(
        storage_options=server.storage_options, cache_dir=tmp_path / "cache", cache_limit="10MB"
    )
    with fastload.Dataset(url, **opts) as ds:
        assert ds.remote and len(ds) == N
        check_all(ds)
        idx = np.random.default_rng(0).permutation(N)[:97]
        batch = ds.get_batch(idx)
        assert batch["i"].tolist() == idx.tolist()
        assert batch["b"] == [index_bytes(int(i)) for i in idx]
        assert [r["i"] for r in ds] == list(range(N))
    # A second reader (another process would do the same) finds every block in the cache.
    with fastload.Dataset(url, **opts) as ds:
        before = ds.io_stats()
        check_all(ds)
        d = delta(before, ds.io_stats())
        assert d["cache_misses"] == 0 and d["cache_hits"] > 0
        # Shard headers and indexes come from the cache too: nothing goes to the server.
        assert d["requests"] == 0, d


def test_first_record_does_not_wait_for_the_shard(s3_server, tmp_path):
    local = write_index_dataset(
        tmp_path / "big",
        3000,
        block_size=16 << 10,
        shard_size=8 << 20,
        compression="none",
        record=lambda i: {**index_record(i), "b": index_bytes(i, 2000)},
    )
    url = upload(s3_server, local)
    with fastload.Dataset(
        url, storage_options=s3_server.storage_options, cache_dir=tmp_path / "cache"
    ) as ds:
        assert len(ds.shards) == 1 and ds.shards[0].bytes > 4 << 20
        before = ds.io_stats()
        assert_record(ds[1234], index_record(1234) | {"b": index_bytes(1234, 2000)})
        d = delta(before, ds.io_stats())
        assert d["bytes_fetched"] < 600_000 and d["requests"] <= 3, d


def test_a_small_shard_takes_one_request(s3_server, s3_ds, tmp_path):
    """A shard smaller than the tail fetched at open comes whole in that one GET, its blocks
    cached (checked) at once."""
    with fastload.Dataset(
        s3_ds, storage_options=s3_server.storage_options, cache_dir=tmp_path / "cache"
    ) as ds:
        assert ds.shards[0].bytes < RemoteOptions().tail_bytes
        before = ds.io_stats()
        for i in range(ds.shards[0].records):
            assert_record(ds[i], index_record(i), i)
        d = delta(before, ds.io_stats())
        assert d["requests"] == 1 and d["bytes_fetched"] == ds.shards[0].bytes, d


def test_shard_header_and_index_are_fetched_together(fault_proxy, s3_ds, tmp_path):
    """Opening a shard larger than the tail costs one round trip, not two: the header's GET
    and the index's are in flight together."""
    fault_proxy.latency = 0.1
    with fastload.Dataset(
        s3_ds,
        storage_options=fault_proxy.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=SMALL_TAIL,
    ) as ds:
        fault_proxy.max_in_flight = 0
        before = fault_proxy.counts["requests"]
        ds.shard_reader(0)
        assert fault_proxy.counts["requests"] - before >= 2
        assert fault_proxy.max_in_flight >= 2


def test_prefetch_coalesces_and_reads_ahead(s3_server, s3_ds, tmp_path):
    with fastload.Dataset(
        s3_ds,
        storage_options=s3_server.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=SMALL_TAIL,
    ) as ds:
        ds.shard_reader(0)  # opened (a few small requests)
        n0 = ds.shards[0].records
        blocks = ds.shards[0].blocks
        assert blocks >= 4
        before = ds.io_stats()
        assert ds.prefetch(range(n0)) == blocks
        deadline = time.monotonic() + 10
        while (
            ds.io_stats()["cache_bytes_written"] - before["cache_bytes_written"]
            < ds.shards[0].bytes // 2
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        check_all_shard = [ds[i] for i in range(n0)]
        for i, r in enumerate(check_all_shard):
            assert_record(r, index_record(i), i)
        d = delta(before, ds.io_stats())
        assert d["requests"] == 1, d  # the shard's neighbouring blocks: one ranged GET
        assert d["prefetch_hits"] == blocks and d["cache_misses"] == 0
        assert ds.prefetch(range(n0)) == 0  # cached now: nothing to fetch


@pytest.fixture(scope="module")
def s3_one_shard(s3_server, tmp_path_factory) -> str:
    """One shard of 40 uncompressed blocks of ~16 KB."""
    path = write_index_dataset(
        tmp_path_factory.mktemp("one") / "ds",
        320,
        block_size=16 << 10,
        shard_size=64 << 20,
        compression="none",
        record=lambda i: {**index_record(i), "b": index_bytes(i, 2000)},
    )
    return upload(s3_server, path)


def wait_written(ds, before: dict, nbytes: int) -> None:
    deadline = time.monotonic() + 10
    while (
        ds.io_stats()["cache_bytes_written"] - before["cache_bytes_written"] < nbytes
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)


def test_dense_read_ahead_fetches_the_shard_in_large_gets(s3_server, s3_one_shard, tmp_path):
    """A process that asks for a large part of a shard (a shuffled epoch soon asks for all of
    it) gets the whole shard into the cache in GETs of up to max_request, the blocks not asked
    for yet included; one that asks for a few blocks of it gets just those, one GET each."""
    opts = dict(
        storage_options=s3_server.storage_options,
        remote_options=RemoteOptions(max_request=256 << 10, tail_bytes=1024),
    )
    with fastload.Dataset(s3_one_shard, cache_dir=tmp_path / "sparse", **opts) as ds:
        reader = ds.shard_reader(0)
        blocks = ds.shards[0].blocks
        assert blocks >= 30
        block_of = reader.index.entries()["block"]
        first = [int(np.flatnonzero(block_of == b)[0]) for b in range(blocks)]
        sizes = reader.blocks["stored_size"]
        before = ds.io_stats()
        assert ds.prefetch([first[3], first[20]]) == 2  # 2 of 40 blocks: not dense
        wait_written(ds, before, int(sizes[3] + sizes[20]))
        time.sleep(0.3)  # time enough for anything else to start
        d = delta(before, ds.io_stats())
        assert d["requests"] == 2 and d["bytes_fetched"] == sizes[3] + sizes[20], d
    with fastload.Dataset(s3_one_shard, cache_dir=tmp_path / "dense", **opts) as ds:
        reader = ds.shard_reader(0)
        wanted = sorted(np.random.default_rng(0).permutation(blocks)[: blocks // 2].tolist())
        assert any(b - a > 1 for a, b in zip(wanted, wanted[1:]))  # gaps to fill
        before = ds.io_stats()
        assert ds.prefetch([first[b] for b in wanted]) == wanted[-1] - wanted[0] + 1  # + gaps
        total = int(sizes.sum())
        wait_written(ds, before, total)
        d = delta(before, ds.io_stats())
        assert d["cache_bytes_written"] == total == d["bytes_fetched"], d  # each block once
        assert d["requests"] <= -(-total // (256 << 10)) + 3, d  # large GETs, not 40
        before = ds.io_stats()
        for i in range(len(ds)):  # every block, asked for or not, is in the cache
            assert_record(ds[i], index_record(i) | {"b": index_bytes(i, 2000)})
        assert delta(before, ds.io_stats())["requests"] == 0


def test_forked_s3_filesystem_shares_only_the_service_models(s3_server, s3_ds, local_ds, tmp_path):
    """A worker's new s3fs filesystem reuses the parent's parsed botocore models (they cost
    ~100 ms to load before a new worker's first GET), in a session of its own."""
    from fastload.io.fs import child_session, reopen_fs

    with fastload.Dataset(
        s3_ds, storage_options=s3_server.storage_options, cache_dir=tmp_path / "cache"
    ) as ds:
        parent = ds.fs.session  # created by the manifest's read
        assert parent is not None
        fs, root = reopen_fs(ds.fs, s3_ds, ds._fs_options)
        assert fs is not ds.fs and fs.session is not parent
        assert fs.session.get_component("data_loader") is parent.get_component("data_loader")
        assert fs.cat_file(f"{root}/manifest.json") == ds.fs.cat_file(f"{ds.root}/manifest.json")
        assert child_session(fastload.Dataset(local_ds).fs) is None  # s3fs only
        own = {"session": object()}  # a session the user gave is kept as given
        assert reopen_fs(ds.fs, s3_ds, {**ds._fs_options, **own})[0].session is own["session"]


def test_prefetch_across_shards_before_and_after_close(s3_server, s3_ds, tmp_path):
    """Blocks of shards not opened yet, of open ones, and after close (which drops what the
    dataset knew of its shards): no block is scheduled twice, and none once cached (half the
    records ask for most blocks: the rest of each shard is fetched in the background)."""
    with fastload.Dataset(
        s3_ds,
        storage_options=s3_server.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=SMALL_TAIL,
    ) as ds:
        total = sum(s.blocks for s in ds.shards)
        order = np.random.default_rng(0).permutation(N)
        first = ds.prefetch(order[: N // 2])
        assert 0 < first and first + ds.prefetch(order) <= total
        check_all(ds)
        assert ds.prefetch(order) == 0  # every shard open, every block cached
        ds.close()
        assert ds.prefetch(order) == 0  # reopened: still cached
        check_all(ds)


def test_a_batch_across_many_shards_opens_them_concurrently(fault_proxy, s3_ds):
    """A shuffled batch touches many shards at first; their headers and indexes are fetched
    several at once, not one round trip after another."""
    fault_proxy.latency = 0.1  # an object store's round trip, so that requests overlap
    with fastload.Dataset(
        s3_ds, storage_options=fault_proxy.storage_options, cache_dir=False
    ) as ds:
        assert len(ds.shards) >= 6
        firsts = [ds.locate(i)[0] for i in range(N)]
        one_per_shard = [firsts.index(s) for s in range(len(ds.shards))]
        fault_proxy.max_in_flight = 0
        batch = ds.get_batch(one_per_shard)
        assert batch["i"].tolist() == one_per_shard
        assert fault_proxy.max_in_flight >= 4


def test_prefetch_ignores_bad_indices_and_local_datasets(s3_server, s3_ds, local_ds, tmp_path):
    with fastload.Dataset(
        s3_ds, storage_options=s3_server.storage_options, cache_dir=tmp_path / "c"
    ) as ds:
        assert ds.prefetch([N + 5, -N - 1]) == 0
        assert ds.prefetch([]) == 0
    with fastload.Dataset(local_ds) as ds:
        assert not ds.remote and ds.prefetch([1, 2, 3]) == 0


@pytest.mark.parametrize("fault", ["500", "503", "reset", "truncate", "short", "stall"])
def test_transient_faults_are_retried(fault, fault_proxy, s3_ds, tmp_path):
    fault_proxy.stall_seconds = 2.0
    with fastload.Dataset(
        s3_ds,
        storage_options=fault_proxy.storage_options,
        cache_dir=False,
        remote_options=RemoteOptions(retry=FAST_RETRY, readahead_blocks=0),
    ) as ds:
        ds.shard_reader(3)
        before = ds.io_stats()
        fault_proxy.script([fault, fault])
        first = int(ds._starts[3])
        assert_record(ds[first], index_record(first))
        d = delta(before, ds.io_stats())
        assert fault_proxy.counts[fault] == 2
        if fault != "reset":  # aiohttp itself retries a reset on a reused connection
            assert d["retries"] >= 1, d


def test_body_cut_short_resumes_from_last_byte(fault_proxy, s3_ds):
    with fastload.Dataset(
        s3_ds,
        storage_options=fault_proxy.storage_options,
        cache_dir=False,
        remote_options=RemoteOptions(retry=FAST_RETRY, readahead_blocks=0),
    ) as ds:
        reader = ds.shard_reader(2)
        entry = reader.blocks[1]
        start, size = int(entry["offset"]), int(entry["stored_size"])
        for fault in ("truncate", "short"):
            ds.close()
            reader = ds.shard_reader(2)
            fault_proxy.log.clear()
            fault_proxy.script([fault])
            r = int(reader.blocks[1]["first_record"])
            i = int(ds._starts[2]) + r
            assert_record(ds[i], index_record(i))
            ranges = [rng for _, _, rng, _ in fault_proxy.log]
            assert ranges[0] == f"bytes={start}-{start + size - 1}"
            assert ranges[1] == f"bytes={start + size // 2}-{start + size - 1}", (fault, ranges)


def test_permanent_errors_fail_at_once(fault_proxy, s3_server, s3_ds, local_ds, tmp_path):
    opts = dict(
        storage_options=fault_proxy.storage_options,
        cache_dir=False,
        remote_options=RemoteOptions(retry=FAST_RETRY),
    )
    with fastload.Dataset(s3_ds, **opts) as ds:
        for fault, error in (("403", RemoteAccessError), ("404", MissingShardError)):
            ds.close()
            fault_proxy.script([fault])
            n = fault_proxy.counts["requests"]
            with pytest.raises(error) as e:
                ds[0]
            assert fault_proxy.counts["requests"] == n + 1  # no retry
            assert "shard-00000.fls" in str(e.value) and fault in str(e.value)
    # A shard deleted from the bucket: named, at once.
    url = upload(s3_server, local_ds)
    s3_server.fs().rm(f"{url.split('://', 1)[1]}/shard-00001.fls")
    with fastload.Dataset(url, storage_options=s3_server.storage_options, cache_dir=False) as ds:
        with pytest.raises(MissingShardError, match="shard-00001.fls"):
            ds[int(ds._starts[1])]


def test_retry_budget_spent_names_url_attempts_and_cause(fault_proxy, s3_ds):
    policy = RetryPolicy(attempts=4, base_s=0.01, cap_s=0.02, budget_s=10)
    with fastload.Dataset(
        s3_ds,
        storage_options=fault_proxy.storage_options,
        cache_dir=False,
        remote_options=RemoteOptions(retry=policy),
    ) as ds:
        fault_proxy.rate, fault_proxy.kinds = 1.0, ("503",)
        t = time.monotonic()
        with pytest.raises(RemoteReadError) as e:
            ds[0]
        assert time.monotonic() - t < 5
        text = str(e.value)
        assert "s3://" in text and "shard-00000.fls" in text and "4 attempts" in text
        assert "503" in text


def test_manifest_read_is_retried(fault_proxy, s3_ds):
    fault_proxy.script(["503", "reset"])
    with fastload.Dataset(
        s3_ds,
        storage_options=fault_proxy.storage_options,
        cache_dir=False,
        remote_options=RemoteOptions(retry=FAST_RETRY),
    ) as ds:
        assert len(ds) == N


def assert_epoch_exactly_once(loader) -> None:
    """An epoch of ``loader`` over the index dataset: every record once, every byte right."""
    seen = []
    for batch in loader:
        ids = batch["i"].tolist()
        seen += ids
        for i, b, v in zip(ids, batch["b"], batch["v"]):
            assert b == index_bytes(i)
            assert np.asarray(v).tobytes() == index_record(i)["v"].tobytes()
    assert sorted(seen) == list(range(N))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("workers,worker_type", [(0, "process"), (2, "process"), (2, "thread")])
def test_loader_epoch_under_faults_exactly_once(workers, worker_type, fault_proxy, s3_ds, tmp_path):
    """An epoch through fastload.DataLoader, with a fifth of the reads failing in every way:
    every sample exactly once, every byte right."""
    fault_proxy.rate = 0.2
    fault_proxy.kinds = ("500", "503", "reset", "truncate", "short")
    ds = fastload.Dataset(
        s3_ds,
        storage_options=fault_proxy.storage_options,
        cache_dir=tmp_path / "cache",
        cache_limit="200KB",
        # requests of two blocks at most: many requests, so many faults
        remote_options=RemoteOptions(retry=FAST_RETRY, max_request=2000, tail_bytes=1024),
    )
    loader = fastload.DataLoader(
        ds,
        batch_size=16,
        shuffle=True,
        num_workers=workers,
        seed=1,
        timeout=60 if workers else 0,
        worker_type=worker_type,
    )
    assert_epoch_exactly_once(loader)
    injected = sum(v for k, v in fault_proxy.counts.items() if k != "requests")
    assert injected > 5
    io = loader.stats()["io"]
    assert io["requests"] > 0 and io["retries"] > 0 and io["bytes_fetched"] > 0
    assert io["prefetch_hits"] > 0  # blocks fetched ahead (the workers hint their queued batches)
    ds.close()


def test_loader_io_counters_count_each_request_once(fault_proxy, s3_ds, tmp_path):
    """Forked workers start their counters from zero: what the main process fetched before
    the fork is not reported again by every worker, every epoch."""
    ds = fastload.Dataset(
        s3_ds,
        storage_options=fault_proxy.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=SMALL_TAIL,
    )
    check_all(ds, 40)  # the main process reads first
    assert ds.io_stats()["requests"] > 0
    loader = fastload.DataLoader(ds, batch_size=16, shuffle=True, seed=0, num_workers=2)
    before = fault_proxy.counts["requests"]
    for _ in range(2):  # fresh workers each epoch
        assert sum(len(b["i"]) for b in loader) == N
    served = fault_proxy.counts["requests"] - before
    # At most what the server saw (read-ahead still in flight when a worker's last batch
    # was reported is not counted; before the fix, the main process's requests were).
    assert 0 < loader.stats()["io"]["requests"] <= served
    ds.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mix_of_remote_datasets_counts_its_reads(workers, s3_server, s3_ds, local_ds, tmp_path):
    remote = fastload.Dataset(
        s3_ds,
        storage_options=s3_server.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=SMALL_TAIL,
    )
    mix = fastload.Mix([fastload.Dataset(local_ds), remote])  # blocks fetched as read
    loader = fastload.DataLoader(mix, batch_size=16, shuffle=True, seed=0, num_workers=workers)
    assert sum(len(b["i"]) for b in loader) == 2 * N
    io = loader.stats()["io"]
    assert io["requests"] > 0 and io["bytes_fetched"] > 0
    remote.close()


def test_loader_without_workers_fetches_the_next_batches_ahead(s3_server, s3_ds, tmp_path):
    """num_workers=0: while batch k is read, the blocks of batches k+1 and k+2 are already
    being fetched (here from other shards, so no in-shard read-ahead can explain it)."""
    with fastload.Dataset(
        s3_ds, storage_options=s3_server.storage_options, cache_dir=tmp_path / "cache"
    ) as ds:
        mid = N // 2
        batches = [
            list(range(16)),
            list(range(N - 16, N)),
            list(range(mid, mid + 16)),
            list(range(16, 32)),
        ]
        assert ds.locate(N - 1)[0] != ds.locate(mid)[0] != ds.locate(0)[0]
        it = iter(fastload.DataLoader(ds, batch_sampler=batches, num_workers=0))
        assert next(it)["i"].tolist() == batches[0]
        assert ds.prefetch(batches[1]) == 0  # in flight or cached already: nothing to schedule
        assert ds.prefetch(batches[2]) == 0
        assert [b["i"].tolist() for b in it] == batches[1:]


TOKENS = {"i": "int64", "tokens": "uint16[65]"}


def token_row(i: int) -> dict:
    return {"i": i, "tokens": ((np.arange(65) * 31 + i) % 65536).astype(np.uint16)}


@pytest.fixture(scope="module")
def s3_tokens(s3_server, tmp_path_factory) -> str:
    """Fixed-size rows in uncompressed blocks, over several shards (the token-data case)."""
    path = tmp_path_factory.mktemp("tokens") / "ds"
    with fastload.Writer(path, TOKENS, shard_size=6000, block_size=1000, compression="none") as w:
        for i in range(300):
            w.write(token_row(i))
    return upload(s3_server, path)


def assert_rows(views: dict, indices) -> None:
    want = [token_row(int(i)) for i in indices]
    assert views["i"].tolist() == [int(i) for i in indices]
    assert np.array_equal(views["tokens"], np.stack([r["tokens"] for r in want]))


def test_batches_of_blocks_at_hand_take_one_gather(s3_server, s3_tokens, tmp_path):
    """A batch whose blocks are cached, mapped and checked in this process is gathered in one
    call (ResidentGather), the same rows as read_into; a batch with a block not at hand, or
    over a dataset closed and reopened, goes through read_into, which fetches or reopens."""
    from fastload.loader import fill
    from fastload.loader.layout import BatchLayout
    from fastload.read.gather import ResidentGather

    ds = fastload.Dataset(
        s3_tokens, storage_options=s3_server.storage_options, cache_dir=tmp_path / "cache"
    )
    assert len(ds.shards) > 3
    layout = BatchLayout(ds.schema, 16)
    fast = fill._raw_gather(ds, layout)
    assert isinstance(fast, ResidentGather)
    slab = np.zeros(layout.slab_size, np.uint8)
    rng = np.random.default_rng(0)

    def batch(n=16):
        return rng.permutation(len(ds))[:n]

    idx = batch()
    assert not fast.gather(idx, layout.views(slab, 16))  # cold: nothing at hand
    listed, timings = fill.fill_batch(ds, layout, slab, idx, (0, 0))
    assert listed == {} and timings["io"]["requests"] > 0  # the counters travel with it
    assert_rows(layout.views(slab, 16), idx)
    for _ in range(2):  # fetched and cached, then mapped from the cache
        ds.read_into(np.arange(len(ds)))
    for n in (1, 5, 16):
        idx = batch(n)
        slab[:] = 0
        assert fast.gather(idx, layout.views(slab, n))
        assert_rows(layout.views(slab, n), idx)
    # nothing fetched or read from the cache: no counters, so the result travels flat
    ds.io_stats_delta()  # (what the reads above counted)
    assert "io" not in fill.fill_batch(ds, layout, slab, idx, (0, 0))[1]
    ds.close()  # the sources it knew are gone: read_into reopens the shards
    idx = batch()
    assert not fast.gather(idx, layout.views(slab, 16))
    fill.fill_batch(ds, layout, slab, idx, (0, 0))
    assert_rows(layout.views(slab, 16), idx)
    ds.read_into(np.arange(len(ds)))  # the cache is warm: this maps every block again
    assert fast.gather(idx, layout.views(slab, 16))
    assert_rows(layout.views(slab, 16), idx)
    ds.close()


def test_gathers_hold_mapped_blocks_only_while_the_store_does(
    s3_server, s3_tokens, tmp_path, monkeypatch
):
    """ResidentGather keeps the mapped blocks a batch used, so the next batches over them are
    one core call with no lookup per block; when the store unmaps any block it lets them all
    go, so it never keeps more mapped than the store's mapped_blocks."""
    from fastload.loader import fill
    from fastload.loader.layout import BatchLayout

    ds = fastload.Dataset(
        s3_tokens,
        storage_options=s3_server.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=RemoteOptions(tail_bytes=1024, mapped_blocks=3),
    )
    ds.read_into(np.arange(len(ds)))  # every block fetched and cached
    ds.prepare_workers()  # cached blocks mapped, as before forking workers: 3 of them
    store, table = ds._store_(), ds.block_table()
    assert len(store.maps) == 3
    layout = BatchLayout(ds.schema, 16)
    fast = fill._raw_gather(ds, layout)
    slab = np.zeros(layout.slab_size, np.uint8)

    def records_of_mapped_blocks() -> np.ndarray:
        blocks = table.block_numbers(np.arange(len(ds)))
        mapped = [g for g in set(blocks.tolist()) if g >= 0 and table.entry(g)[0] in store.maps]
        return np.flatnonzero(np.isin(blocks, mapped))

    def held() -> list:
        return [v for v in fast._held if v is not None]

    idx = records_of_mapped_blocks()[::-1][:16]
    assert fast.gather(idx, layout.views(slab, 16))  # looked up, and held
    assert_rows(layout.views(slab, 16), idx)
    assert 1 <= len(held()) <= 3
    assert all(any(v is m for m in store.maps.values()) for v in held())
    looked_up = []
    monkeypatch.setattr(fast, "_gather_looked_up", lambda *a: looked_up.append(1) or False)
    slab[:] = 0
    assert fast.gather(idx, layout.views(slab, 16))  # one core call
    assert_rows(layout.views(slab, 16), idx)
    assert not looked_up
    monkeypatch.undo()
    first = next(iter(store.maps))
    store.keep_mapped(("another", 0), memoryview(bytearray(8)))  # the oldest is unmapped
    assert first not in store.maps
    slab[:] = 0
    fill.fill_batch(ds, layout, slab, idx, (0, 0))  # held ones let go; read_into's rows
    assert_rows(layout.views(slab, 16), idx)
    assert all(any(v is m for m in store.maps.values()) for v in held())
    ds.close()


def test_hints_stop_once_every_block_is_mapped(s3_server, s3_tokens, tmp_path):
    """A warm worker's read-ahead hints cost nothing once every block is mapped; when one is
    not (evicted from the maps and the cache), hints fetch it again."""
    ds = fastload.Dataset(
        s3_tokens,
        storage_options=s3_server.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=SMALL_TAIL,
    )
    assert not ds._all_mapped()
    ds.read_into(np.arange(len(ds)))  # every block fetched and cached
    assert not ds._all_mapped()
    ds.prepare_workers()  # what the loader does before forking: the cached blocks mapped
    assert ds._all_mapped()
    assert ds.prefetch(np.arange(len(ds))) == 0
    (uid, b), _ = ds._store.maps.popitem()
    ds.cache.clear()
    for reader in ds._readers:
        reader._cache.clear()
    assert not ds._all_mapped()
    assert ds.prefetch(np.arange(len(ds))) >= 1
    assert_rows(
        {k: np.asarray(v) for k, v in ds.get_batch(np.arange(len(ds))).items()}, range(len(ds))
    )
    ds.close()


def test_compressed_blocks_are_gathered_from_their_decompressed_bytes(s3_server, tmp_path):
    """zstd blocks are gathered in one call only from their decompressed bytes in the block
    cache, never from the stored (compressed) copy mapped from the file cache; a block not
    decompressed yet leaves the batch to read_into, which fetches and decompresses it."""
    from fastload.loader import fill
    from fastload.loader.layout import BatchLayout
    from fastload.read.gather import ResidentGather

    path = tmp_path / "zstd"
    with fastload.Writer(path, TOKENS, shard_size=6000, block_size=1000, compression="zstd") as w:
        for i in range(100):
            w.write(token_row(i))
    url = upload(s3_server, path)
    with fastload.Dataset(
        url, storage_options=s3_server.storage_options, cache_dir=tmp_path / "cache"
    ) as ds:
        layout = BatchLayout(ds.schema, 16)
        fast = fill._raw_gather(ds, layout)
        assert isinstance(fast, ResidentGather)
        ds.read_into(np.arange(len(ds)))  # every shard open, every block at hand
        rng = np.random.default_rng(1)
        for _ in range(3):
            slab = np.zeros(layout.slab_size, np.uint8)
            idx = rng.permutation(len(ds))[:16]
            assert fast.gather(idx, layout.views(slab, 16))
            assert_rows(layout.views(slab, 16), idx)
        ds._decoded.clear()  # the stored copies stay mapped; nothing decompressed
        assert ds._store_().maps
        slab = np.zeros(layout.slab_size, np.uint8)
        assert not fast.gather(idx, layout.views(slab, 16))
        fill.fill_batch(ds, layout, slab, idx, (0, 0))
        assert_rows(layout.views(slab, 16), idx)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_over_cached_token_rows_exactly_once(workers, s3_server, s3_tokens, tmp_path):
    ds = fastload.Dataset(
        s3_tokens, storage_options=s3_server.storage_options, cache_dir=tmp_path / "cache"
    )
    loader = fastload.DataLoader(
        ds, batch_size=16, shuffle=True, seed=3, num_workers=workers, persistent_workers=workers > 0
    )
    for epoch in range(3):  # cold, then from the cache, then from mapped copies
        seen = []
        for b in loader:
            assert_rows({k: v.numpy() for k, v in b.items()}, b["i"].tolist())
            seen += b["i"].tolist()
        assert sorted(seen) == list(range(len(ds))), epoch
    del loader
    ds.close()


@pytest.mark.parametrize("persistent,block_cache", [(False, "128MiB"), (True, "32KiB")])
def test_workers_share_out_remote_compressed_blocks(persistent, block_cache, s3_server, tmp_path):
    """Token rows in zstd blocks on S3, read by two workers that share each batch out by
    block (they start afresh each epoch; or the dataset outgrows one worker's block cache):
    cold, from the file cache, then from mapped copies, every row exactly once and right, and
    each block decompressed once per worker start (persistent: once for the whole run)."""

    def row(i: int) -> dict:
        return {"i": i, "tokens": np.full(65, i % 251, np.uint16)}  # zstd packs it ~10x

    path = tmp_path / "zstd"
    with fastload.Writer(path, TOKENS, shard_size=6000, block_size=1000, compression="zstd") as w:
        for i in range(300):
            w.write(row(i))
    ds = fastload.Dataset(
        upload(s3_server, path),
        storage_options=s3_server.storage_options,
        cache_dir=tmp_path / "cache",
        block_cache=block_cache,
    )
    blocks, raw = sum(s.blocks for s in ds.shards), sum(s.raw_bytes for s in ds.shards)
    assert ds.manifest.bytes < 0.5 * raw  # compressed
    assert 32 << 10 < raw <= 64 << 10  # over one worker's 32 KiB cache, within two
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one worker's cache is too small: the point
        loader = fastload.DataLoader(
            ds, batch_size=16, shuffle=True, seed=3, num_workers=2, persistent_workers=persistent
        )
    assert loader._by_block
    for epoch in range(3):
        seen = []
        for b in loader:
            i = b["i"].numpy()
            np.testing.assert_array_equal(b["tokens"].numpy(), np.repeat(i[:, None] % 251, 65, 1))
            seen += i.tolist()
        assert sorted(seen) == list(range(len(ds))), epoch
    assert loader.stats()["decompressed_blocks"] == blocks * (1 if persistent else 3)
    loader.close()
    ds.close()


def test_forked_workers_start_with_what_the_parent_opened(
    s3_server, s3_tokens, tmp_path, monkeypatch
):
    """Before forking its workers, the loader opens the dataset's shards (a small dataset:
    all of them, at once) and maps the blocks the cache holds; the workers keep all of it, so
    they open no shard, and an epoch from a warm cache costs them no cache reads at all (each
    used to open and check everything again)."""
    ds = fastload.Dataset(
        s3_tokens,
        storage_options=s3_server.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=SMALL_TAIL,
    )
    # A cold cache: shards opened; the only blocks to map are those the tail read at open held
    # whole (at most one a shard: tails of 1 KiB, blocks of ~1 KB)
    assert ds.prepare_workers() <= len(ds.shards)
    assert all(r is not None for r in ds._readers)
    loader = fastload.DataLoader(ds, batch_size=16, shuffle=True, seed=3, num_workers=2)
    for epoch in range(3):  # cold (workers fetch blocks), then twice from what the parent mapped
        seen = []
        for b in loader:
            assert_rows({k: v.numpy() for k, v in b.items()}, b["i"].tolist())
            seen += b["i"].tolist()
        assert sorted(seen) == list(range(len(ds))), epoch
        io = loader.stats()["io"]
        if epoch == 0:
            # every GET a worker made was for a block: at most one per block, none for opens
            assert 0 < io["requests"] <= sum(s.blocks for s in ds.shards)
            first = dict(io)
    assert len(ds._store.maps) == sum(s.blocks for s in ds.shards)
    later = delta(first, loader.stats()["io"])
    assert later["requests"] == 0 and later["cache_hits"] == 0, later
    del loader
    ds.close()
    # Beyond OPEN_AHEAD shards, only what the cache holds is opened before the fork.
    monkeypatch.setattr(fastload.read.shards, "OPEN_AHEAD", 2)
    with fastload.Dataset(
        s3_tokens,
        storage_options=s3_server.storage_options,
        cache_dir=tmp_path / "cold",
        remote_options=SMALL_TAIL,
    ) as cold:
        before = cold.io_stats()
        assert cold.prepare_workers() == 0
        assert delta(before, cold.io_stats())["requests"] == 0
        assert all(r is None for r in cold._readers)


def test_a_forked_child_makes_its_filesystem_only_for_a_request(s3_server, s3_tokens, tmp_path):
    """A forked worker reading only what the parent has at hand makes no filesystem of its
    own (making one cost ~6 ms and a thread per worker per epoch); its first request makes
    one, and reads right."""
    import os

    ds = fastload.Dataset(
        s3_tokens,
        storage_options=s3_server.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=SMALL_TAIL,
    )
    assert ds.get_batch(range(8))["i"].tolist() == list(range(8))  # shard 0, held
    last = len(ds) - 1  # in another shard, never opened
    assert ds.locate(last)[0] > 0 and ds._readers[ds.locate(last)[0]] is None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through the pipe, and never returns into pytest
        try:
            ok = [
                ds.get_batch(range(8))["i"].tolist() == list(range(8)),
                ds._fs is None,
                ds.io_stats()["requests"] == 0,
            ]
            ok += [ds[last]["i"] == last, ds._fs is not None, ds.io_stats()["requests"] > 0]
            os.write(w, "".join("1" if x else "0" for x in ok).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 16) == b"111111"
    os.close(r)
    assert ds[last]["i"] == last  # the parent's filesystem is still its own
    ds.close()


def test_fork_while_the_parent_reads_ahead(fault_proxy, s3_ds, tmp_path):
    """Workers forked while the main process has read-ahead in flight (its threads, locks
    and pending fetches do not exist in the child) still read every sample exactly once."""
    fault_proxy.latency = 0.2
    ds = fastload.Dataset(
        s3_ds,
        storage_options=fault_proxy.storage_options,
        cache_dir=tmp_path / "cache",
        remote_options=SMALL_TAIL,
    )
    check_all(ds, 10)  # shards 0 and 1 open in the parent
    assert ds.prefetch(range(N)) > 0  # and their blocks in flight as it forks
    loader = fastload.DataLoader(ds, batch_size=16, shuffle=True, seed=0, num_workers=2, timeout=60)
    seen = []
    for b in loader:
        seen += b["i"].tolist()
    assert sorted(seen) == list(range(N))
    del loader
    ds.close()


def test_cli_inspect_and_verify_remote(s3_server, s3_ds, capsys, monkeypatch, tmp_path):
    import json

    from fastload.cli import main

    monkeypatch.setenv("FASTLOAD_CACHE_DIR", str(tmp_path / "cache"))
    opts = json.dumps(s3_server.storage_options)
    assert main(["inspect", s3_ds, "--storage-options", opts, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == N
    assert main(["verify", s3_ds, "--storage-options", opts, "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out


def test_dataset_pickles_without_its_connections(s3_server, s3_ds, tmp_path):
    import pickle

    with fastload.Dataset(
        s3_ds, storage_options=s3_server.storage_options, cache_dir=tmp_path
    ) as ds:
        ds[3]
        copy = pickle.loads(pickle.dumps(ds))
        assert copy._store is None
        assert_record(copy[7], index_record(7))
        copy.close()


def test_plain_http_url(s3_server, local_ds, tmp_path):
    """``http(s)://`` URLs read the same way (here: moto serving public objects)."""
    url = upload(s3_server, local_ds)
    fs = s3_server.fs()
    for path in fs.find(url.split("://", 1)[1]):
        fs.chmod(path, "public-read")
    http_url = f"{s3_server.endpoint_url}/{url.split('://', 1)[1]}"
    with fastload.Dataset(http_url, cache_dir=tmp_path) as ds:
        assert ds.remote
        check_all(ds)
        assert ds.get_batch([5, 399, 0])["i"].tolist() == [5, 399, 0]


# ----------------------------------------------------------------------- GCS under faults
# gcsfs retries 5xx, resets and cut connections itself (up to 6 tries, sleeping 1-2 s, then
# 2-3 s, ...; not configurable), so these inject a few faults rather than a rate.


@pytest.fixture(scope="module")
def gcs_ds(gcs_server, local_ds) -> str:
    return upload(gcs_server, local_ds)


@pytest.mark.parametrize("fault", ["500", "503", "reset", "truncate", "short"])
def test_gcs_transient_faults_are_retried(fault, gcs_fault_proxy, gcs_ds):
    with fastload.Dataset(
        gcs_ds,
        storage_options=gcs_fault_proxy.storage_options,
        cache_dir=False,
        remote_options=RemoteOptions(retry=FAST_RETRY, readahead_blocks=0, tail_bytes=1024),
    ) as ds:
        reader = ds.shard_reader(3)
        r = int(reader.blocks[1]["first_record"])  # a block beyond the tail read at open
        i = int(ds._starts[3]) + r
        gcs_fault_proxy.script([fault])
        assert_record(ds[i], index_record(i))
        assert gcs_fault_proxy.counts[fault] == 1


def test_gcs_permanent_errors_fail_at_once(gcs_fault_proxy, gcs_ds):
    with fastload.Dataset(
        gcs_ds,
        storage_options=gcs_fault_proxy.storage_options,
        cache_dir=False,
        remote_options=RemoteOptions(retry=FAST_RETRY),
    ) as ds:
        for fault, error in (("403", RemoteAccessError), ("404", MissingShardError)):
            ds.close()
            gcs_fault_proxy.script([fault])
            n = gcs_fault_proxy.counts["requests"]
            t = time.monotonic()
            with pytest.raises(error) as e:
                ds[0]
            assert gcs_fault_proxy.counts["requests"] == n + 1  # no retry, ours or gcsfs's
            assert time.monotonic() - t < 1
            assert "gs://" in str(e.value) and "shard-00000.fls" in str(e.value)


@pytest.mark.timeout(240)
def test_gcs_loader_epoch_under_faults_exactly_once(gcs_fault_proxy, gcs_ds, tmp_path):
    """An epoch from GCS through two worker processes with every kind of fault injected
    among its reads: every sample exactly once, every byte right."""
    faults = ["500", "503", "reset", "truncate", "short"]
    gcs_fault_proxy.script([x for f in faults for x in (None, None, f)])
    ds = fastload.Dataset(
        gcs_ds,
        storage_options=gcs_fault_proxy.storage_options,
        cache_dir=tmp_path / "cache",
        cache_limit="200KB",
        remote_options=RemoteOptions(retry=FAST_RETRY, max_request=2000, tail_bytes=1024),
    )
    loader = fastload.DataLoader(ds, batch_size=16, shuffle=True, num_workers=2, seed=1, timeout=60)
    assert_epoch_exactly_once(loader)
    assert {f: gcs_fault_proxy.counts.get(f, 0) for f in faults} == dict.fromkeys(faults, 1)
    assert loader.stats()["io"]["requests"] > 0
    ds.close()


def test_io_counter_increments_from_threads_are_each_reported_once():
    """IOStats.delta returns {} at once when nothing was added (it runs once per batch in
    every worker); increments added from other threads meanwhile are never lost or doubled."""
    import threading

    from fastload.io.iostats import IOStats

    stats = IOStats()
    assert stats.delta() == {}
    stats.add("requests", 2)
    assert stats.delta() == {"requests": 2} and stats.delta() == {}
    total, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            total[0] += stats.delta().get("requests", 0)

    threads = [
        threading.Thread(target=lambda: [stats.add("requests") for _ in range(20000)])
        for _ in range(3)
    ]
    poller = threading.Thread(target=poll)
    poller.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    poller.join()
    total[0] += stats.delta().get("requests", 0)
    assert total[0] == 60000 and stats.as_dict()["requests"] == 60002


@pytest.mark.parametrize("workers", [0, 2])
def test_a_block_corrupt_at_the_source_is_skipped_under_skip(workers, s3_server, tmp_path):
    """docs/reliability.md A8 over S3: a block whose bytes fail their checksum on the server
    (fetched twice, never cached) raises by default, naming the shard and block; under
    bad_samples='skip' its records are dropped and counted, every other record comes once."""
    import json

    from tests.format.formattools import parse_shard

    path = tmp_path / "ds"
    with fastload.Writer(path, TOKENS, shard_size=6000, block_size=1000, compression="none") as w:
        for i in range(120):
            w.write(token_row(i))
    manifest = json.loads((path / "manifest.json").read_text())
    shard = path / manifest["shards"][1]["path"]
    data = bytearray(shard.read_bytes())
    block = parse_shard(bytes(data))["blocks"][2]
    data[block["offset"] + block["stored_size"] // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    first = manifest["shards"][0]["records"] + block["first_record"]
    lost = set(range(first, first + block["n_records"]))
    url = upload(s3_server, path)
    opts = {"storage_options": s3_server.storage_options, "cache_dir": tmp_path / "cache"}
    with fastload.Dataset(url, **opts) as ds:
        with pytest.raises(fastload.errors.CorruptRecordError, match=r"block 2 .*checksum"):
            list(fastload.DataLoader(ds, batch_size=16, num_workers=workers))
    with fastload.Dataset(url, **opts) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=16,
            shuffle=True,
            seed=1,
            num_workers=workers,
            bad_samples=fastload.SkipBadSamples(max_fraction=0.5),
        )
        seen = []
        for b in loader:
            assert_rows({k: v.numpy() for k, v in b.items()}, b["i"].tolist())
            seen += b["i"].tolist()
        assert sorted(seen) == sorted(set(range(120)) - lost)
        assert loader.stats()["skipped_samples"] == len(lost) > 0


@pytest.fixture(scope="module")
def s3_big_index(s3_server, tmp_path_factory) -> str:
    """One shard of 20,000 small records: its index (~80 KB) is far larger than the 1 KiB tail
    read at open."""
    path = tmp_path_factory.mktemp("bigindex") / "ds"
    with fastload.Writer(path, {"i": "int64"}, compression="none") as w:
        for i in range(20_000):
            w.write({"i": i})
    return upload(s3_server, path)


def mapped_files() -> set[str]:
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if len(line.split()) >= 6}


def test_an_index_larger_than_the_tail_is_read_where_it_lies(s3_server, s3_big_index, tmp_path):
    """A process does not keep a copy of an index it fetched: once checked, the index goes to
    the cache and the shard is read from there, mapped (shared by every process); a later
    process maps it without fetching it; a damaged cached copy is fetched anew."""
    from fastload.format.spec import TRAILER_SIZE

    def opened() -> fastload.Dataset:
        return fastload.Dataset(
            s3_big_index,
            storage_options=s3_server.storage_options,
            cache_dir=tmp_path / "cache",
            remote_options=SMALL_TAIL,
        )

    ds = opened()
    assert [ds[i]["i"] for i in (0, 12_345, 19_999)] == [0, 12_345, 19_999]
    reader = ds.shard_reader(0)
    length = int(ds.shards[0].bytes) - TRAILER_SIZE - reader.data_end
    assert length > 8 << 10  # the index, far past the 1 KiB tail
    name = f"{reader.data_end}-{length}.blk"
    cached = [p for p in (tmp_path / "cache").rglob(name)]
    assert len(cached) == 1
    assert str(cached[0]) in mapped_files()  # read where it lies, in the cache
    ds.close()

    again = opened()
    assert again[7]["i"] == 7
    assert str(cached[0]) in mapped_files()
    again.close()

    # A damaged copy (the same size): checked at open, deleted, fetched and stored anew.
    good = cached[0].read_bytes()
    cached[0].write_bytes(b"\0" * len(good))
    third = opened()
    assert [third[i]["i"] for i in (3, 19_998)] == [3, 19_998]
    assert cached[0].read_bytes() == good
    third.close()
