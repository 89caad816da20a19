"""fastload.Dataset: indexing, slices, iteration, get_batch, pickling, lifetime, remote paths."""

from __future__ import annotations

import pickle
import threading
import uuid

import fsspec
import numpy as np
import pytest

import fastload
from fastload.io.remote import RemoteSource
from fastload.io.source import MappedSource
from tests.format.formattools import (
    INDEX_SCHEMA,
    assert_record,
    index_record,
    values_equal,
    write_index_dataset,
)

N = 120


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory):
    return write_index_dataset(tmp_path_factory.mktemp("ds") / "ds", N)


@pytest.fixture
def ds(ds_path):
    with fastload.Dataset(ds_path) as d:
        yield d


def test_len_shards_and_every_record(ds):
    assert len(ds) == N and len(ds.shards) >= 5  # tiny shards: many of them
    assert sum(s.records for s in ds.shards) == N
    assert ds.schema == fastload.Schema(INDEX_SCHEMA)
    for i in range(N):
        assert_record(ds[i], index_record(i), i)


def test_negative_and_numpy_indices(ds):
    assert_record(ds[-1], index_record(N - 1))
    assert_record(ds[-N], index_record(0))
    assert_record(ds[np.int64(5)], index_record(5))
    assert_record(ds[np.uint8(7)], index_record(7))
    assert_record(ds[np.int32(-2)], index_record(N - 2))


@pytest.mark.parametrize("bad", [N, N + 1, -N - 1, 10**30, -(10**30), np.uint64(2**64 - 1)])
def test_out_of_range_index(ds, bad):
    with pytest.raises(IndexError, match="out of range"):
        ds[bad]


@pytest.mark.parametrize("bad", ["1", 1.0, None, True, np.float64(2), [1, 2], (1,)])
def test_non_integer_index(ds, bad):
    with pytest.raises(TypeError, match="integers"):
        ds[bad]


SLICES = [
    slice(2, 10, 3),
    slice(None, None, -1),
    slice(-3, None),
    slice(N - 2, N + 50),
    slice(100, 50),
    slice(None, None, 17),
]


@pytest.mark.parametrize("sl", SLICES)
def test_slices(ds, sl):
    got = ds[sl]
    expected = list(range(N))[sl]
    assert isinstance(got, list) and [r["i"] for r in got] == expected
    for r, i in zip(got, expected):
        assert_record(r, index_record(i))


def test_iteration_is_in_order_without_duplicates(ds):
    seen = [r["i"] for r in ds]
    assert seen == list(range(N))
    assert [r["i"] for r in ds] == seen  # iterating again gives the same


def test_locate_maps_to_shards(ds):
    starts = np.cumsum([0] + [s.records for s in ds.shards])
    for i in (0, 1, N - 1, int(starts[3]), int(starts[3]) - 1):
        s, r = ds.locate(i)
        assert starts[s] + r == i and 0 <= r < ds.shards[s].records


def check_batch(ds, idx):
    batch = ds.get_batch(idx)
    idx = [int(i) % N for i in np.asarray(idx).reshape(-1)]
    assert list(batch) == list(INDEX_SCHEMA)
    for f in ds.schema:
        col = batch[f.name]
        if f.is_fixed:
            assert isinstance(col, np.ndarray) and col.dtype == f.np_dtype
            assert col.shape == (len(idx), *(f.shape or ()))
            expected = np.array([index_record(i)[f.name] for i in idx], dtype=f.np_dtype)
            assert values_equal(col, expected.reshape(col.shape)), f.name
        else:
            assert isinstance(col, list) and len(col) == len(idx)
            for v, i in zip(col, idx):
                assert (
                    values_equal(v, index_record(i)[f.name])
                    if isinstance(v, np.ndarray)
                    else v == index_record(i)[f.name]
                ), (f.name, i)
    return batch


def test_get_batch_random_repeated_negative_across_shards(ds):
    rng = np.random.default_rng(0)
    for size in (1, 7, 64, 300):
        idx = rng.integers(-N, N, size)
        check_batch(ds, idx)
    check_batch(ds, [5, 5, 5, -1, -1, 0, N - 1])
    check_batch(ds, list(range(N)))
    check_batch(ds, np.arange(N)[::-1].copy())
    check_batch(ds, np.array([[3, 4], [100, -7]]))  # any shape: flattened
    check_batch(ds, np.array([1, 2], np.uint8))


def test_get_batch_matches_single_records(ds):
    idx = [17, 3, 99, 3, -4]
    batch = ds.get_batch(idx)
    for j, i in enumerate(idx):
        single = ds[i]
        for k, v in single.items():
            got = batch[k][j]
            if isinstance(v, np.ndarray):
                assert values_equal(np.asarray(got), v), k
            else:
                assert got == v and (not isinstance(got, np.generic) or got.dtype.kind in "biu"), k


def test_get_batch_empty(ds):
    batch = ds.get_batch([])
    assert batch["i"].shape == (0,) and batch["f"].shape == (0, 3) and batch["b"] == []
    assert ds.get_batch(np.zeros(0, np.int64))["s"] == []


@pytest.mark.parametrize(
    "bad", [[N], [0, -N - 1], [2**63 - 1], np.array([2**64 - 1], np.uint64), [10**30]]
)
def test_get_batch_out_of_range(ds, bad):
    with pytest.raises(IndexError, match="out of range"):
        ds.get_batch(bad)


@pytest.mark.parametrize("bad", [[1.5], [0.0, 1.0], np.array([1.0]), [True, False], ["1"], [None]])
def test_get_batch_rejects_non_integer_indices(ds, bad):
    """Regression: float indices were silently truncated (1.5 read record 1)."""
    with pytest.raises(TypeError, match="integers"):
        ds.get_batch(bad)


def test_pickle_after_use_and_read_in_the_copy(ds_path):
    ds = fastload.Dataset(ds_path)
    ds[3], ds[N - 1], ds.get_batch([1, 50])
    assert any(r is not None for r in ds._readers)
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # open shards (maps) are not pickled
    copy = pickle.loads(blob)
    assert all(r is None for r in copy._readers)
    assert len(copy) == N and copy.fingerprint == ds.fingerprint
    for i in (0, 3, N - 1):
        assert_record(copy[i], index_record(i))
    check_batch(copy, [7, -7, 7])
    assert_record(ds[4], index_record(4))  # the original is unaffected
    copy.close()
    ds.close()


def test_close_then_reuse(ds_path):
    ds = fastload.Dataset(ds_path)
    assert_record(ds[10], index_record(10))
    ds.close()
    assert all(r is None for r in ds._readers)
    assert_record(ds[10], index_record(10))  # reopens on demand
    check_batch(ds, [0, 60, 119])
    ds.close()
    ds.close()  # idempotent
    with ds:
        assert_record(ds[-1], index_record(N - 1))
    assert all(r is None for r in ds._readers)


def test_local_shards_are_mapped(ds):
    ds[0]
    assert isinstance(ds.shard_reader(0).source, MappedSource)


def test_verify_false_reads_the_same(ds_path):
    with fastload.Dataset(ds_path, verify=False) as ds:
        for i in range(0, N, 7):
            assert_record(ds[i], index_record(i))
        check_batch(ds, [1, 2, 99])


def test_fingerprint_is_stable_and_content_dependent(ds_path, tmp_path):
    a = fastload.Dataset(ds_path).fingerprint
    assert a == fastload.Dataset(ds_path).fingerprint and a.startswith("xxh64:")
    other = write_index_dataset(tmp_path / "other", N - 1)
    assert fastload.Dataset(other).fingerprint != a


def test_repr(ds):
    assert f"records={N}" in repr(ds) and "shards=" in repr(ds)


def test_empty_dataset(tmp_path):
    with fastload.Writer(tmp_path / "e", {"i": "int64", "b": "bytes"}):
        pass
    with fastload.Dataset(tmp_path / "e") as ds:
        assert len(ds) == 0 and list(ds) == [] and ds[:] == [] and ds.shards == ()
        with pytest.raises(IndexError):
            ds[0]
        with pytest.raises(IndexError):
            ds[-1]
        assert ds.get_batch([])["b"] == []


def test_reads_from_many_threads(ds_path):
    """Loader threads share one Dataset (and its zstd blocks)."""
    ds = fastload.Dataset(ds_path)
    errors: list = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(150):
                i = int(rng.integers(0, N))
                if ds[i]["b"] != index_record(i)["b"]:
                    errors.append(("wrong", i))
            for _ in range(5):
                idx = rng.integers(0, N, 32)
                if ds.get_batch(idx)["i"].tolist() != idx.tolist():
                    errors.append(("wrong batch",))
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ds.close()
    assert errors == []


def test_remote_filesystem_round_trip():
    """Any fsspec URL: written and read through fsspec (ranged reads, not a map)."""
    url = f"memory://fastload-test-{uuid.uuid4().hex}/ds"
    with fastload.Writer(url, INDEX_SCHEMA, block_size=300, shard_size=1000) as w:
        for i in range(40):
            w.write(index_record(i))
    with fastload.Dataset(url) as ds:
        assert len(ds) == 40 and len(ds.shards) > 2
        for i in range(40):
            assert_record(ds[i], index_record(i))
        check_batch_remote = ds.get_batch([39, 0, 17, 17])
        assert check_batch_remote["i"].tolist() == [39, 0, 17, 17]
        assert isinstance(ds.shard_reader(0).source, RemoteSource)  # ranged reads of blocks
        assert ds.shard_reader(0).source.buffer is None
        assert ds.shard_reader(0).name.startswith("memory://")
        copy = pickle.loads(pickle.dumps(ds))
        assert_record(copy[5], index_record(5))
    fsspec.filesystem("memory").rm(url.split("://")[1].rsplit("/", 1)[0], recursive=True)


def test_read_into_image_views_point_into_the_records_only_for_named_fields(tmp_path):
    """image_views: the named image fields are views straight into the checked record bytes
    (the shard's map, uncompressed; a decompressed block, zstd), no copy; they stay valid
    after the dataset is closed. Other fields are bytes copies."""
    import io

    from PIL import Image

    def jpeg(i: int) -> bytes:
        f = io.BytesIO()
        Image.new("RGB", (8 + i, 6), (i, 2 * i, 3)).save(f, "JPEG")
        return f.getvalue()

    for compression in ("none", "zstd"):
        path = tmp_path / compression
        with fastload.Writer(
            path, {"a": "image", "b": "image", "i": "int64"}, compression=compression
        ) as w:
            for i in range(6):
                w.write({"a": jpeg(i), "b": jpeg(i + 10), "i": i})
        ds = fastload.Dataset(path)
        got = ds.read_into([4, 0, 5], image_views=["a"])
        assert [type(im.data) for im in got["a"]] == [memoryview] * 3
        assert [type(im.data) for im in got["b"]] == [bytes] * 3  # not named: a copy
        if compression == "none":  # slices of the shard's own map
            mapped = ds.shard_reader(0).source.buffer
            assert len(ds.shards) == 1 and all(im.data.obj is mapped.obj for im in got["a"])
        ds.close()  # the views keep what they point into
        for k, i in enumerate([4, 0, 5]):
            assert bytes(got["a"][k].data) == jpeg(i) and got["b"][k].data == jpeg(i + 10)
            assert (got["a"][k].width, got["a"][k].height) == (8 + i, 6)
        assert [type(im.data) for im in ds.read_into([1])["a"]] == [bytes]  # default: copies
        ds.close()
