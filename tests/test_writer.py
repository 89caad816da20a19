"""fastload.Writer: shard rolling, manifest-last, failure cleanup, parallel parts, determinism,
and preparing the destination."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fastload
from fastload import ConvertError, ManifestError
from fastload.writer import merge_parts, prepare_destination
from tests.format.formattools import INDEX_SCHEMA, all_files, assert_record, index_record


def read_i(path) -> list[int]:
    with fastload.Dataset(path) as ds:
        return [r["i"] for r in ds]


def tmp_files(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*.tmp"))


# --------------------------------------------------------------------------- shards and blocks


def test_writer_rolls_shards_at_shard_size(tmp_path):
    with fastload.Writer(tmp_path / "ds", INDEX_SCHEMA, block_size=256, shard_size="2KB") as w:
        for i in range(200):
            w.write(index_record(i))
        assert w.records_written == 200
    with fastload.Dataset(tmp_path / "ds") as ds:
        shards = ds.shards
        assert len(shards) > 5 and ds.manifest.options["shard_size"] == 2000
        for s in shards[:-1]:
            # a shard is closed once its blocks reach shard_size: at most one block (+ index) over
            assert 2000 <= s.bytes < 2000 + 256 + 64 * (s.blocks + 1) + 16 * s.records + 100
        assert shards[-1].bytes <= shards[0].bytes + 1000
        assert [s.path for s in shards] == [f"shard-{k:05d}.fls" for k in range(len(shards))]
        for s in shards:
            assert (tmp_path / "ds" / s.path).stat().st_size == s.bytes
        for i, rec in enumerate(ds):
            assert_record(rec, index_record(i))
    assert w.bytes_written == sum(s.bytes for s in shards)


def test_blocks_hold_about_block_size_raw_bytes(tmp_path):
    with fastload.Writer(tmp_path / "ds", {"b": "bytes"}, block_size=1000, compression="none") as w:
        for i in range(100):
            w.write({"b": bytes([i]) * 96})  # 4 + 96 = 100 bytes, aligned to 104
    with fastload.Dataset(tmp_path / "ds") as ds:
        r = ds.shard_reader(0)
        sizes = r.blocks["raw_size"].tolist()
        assert all(s <= 1000 for s in sizes) and max(sizes) > 900
        assert r.index.entries()["offset"].tolist()[:3] == [0, 104, 208]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"compression": "gzip"}, "compression"),
        ({"level": 30}, "level"),
        ({"block_size": 0}, "positive"),
        ({"shard_size": 0}, "positive"),
        ({"block_size": "1 furlong"}, "not a size"),
        ({"part": -1}, "part"),
        ({"part": "1"}, "part"),
    ],
)
def test_bad_writer_options(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastload.Writer(tmp_path / "ds", {"i": "int64"}, **kwargs)


def test_bad_schema_is_rejected_before_anything_is_written(tmp_path):
    with pytest.raises(fastload.SchemaError):
        fastload.Writer(tmp_path / "ds", {"i": "int65"})
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- manifest last


def test_manifest_is_written_only_on_close(tmp_path):
    dst = tmp_path / "ds"
    w = fastload.Writer(dst, INDEX_SCHEMA, block_size=200, shard_size=1000)
    for i in range(60):
        w.write(index_record(i))
    assert len(list(dst.glob("shard-*.fls"))) >= 2  # finished shards are already there
    assert not (dst / "manifest.json").exists()
    with pytest.raises(fastload.IncompleteDatasetError, match="interrupted"):
        fastload.Dataset(dst)
    manifest = w.close()
    assert (dst / "manifest.json").exists() and manifest.records == 60
    assert json.loads((dst / "manifest.json").read_text()) == manifest.to_json()
    assert tmp_files(dst) == []
    with pytest.raises(ValueError, match="closed"):
        w.write(index_record(0))
    with pytest.raises(ValueError, match="already closed"):
        w.close()
    assert read_i(dst) == list(range(60))


class Boom(Exception):
    pass


@pytest.mark.parametrize("fail_at", [0, 1, 37])
def test_exception_inside_with_leaves_no_manifest_and_no_tmp(tmp_path, fail_at):
    dst = tmp_path / "ds"
    with pytest.raises(Boom):
        with fastload.Writer(dst, INDEX_SCHEMA, block_size=200, shard_size=1000) as w:
            for i in range(60):
                if i == fail_at:
                    raise Boom()
                w.write(index_record(i))
    assert not (dst / "manifest.json").exists()
    assert tmp_files(dst) == []
    with pytest.raises(fastload.IncompleteDatasetError):
        fastload.Dataset(dst)
    # a new write over the leftovers succeeds and cleans them
    with fastload.Writer(dst, INDEX_SCHEMA, block_size=200, shard_size=1000) as w:
        for i in range(5):
            w.write(index_record(i))
    assert read_i(dst) == list(range(5))
    assert sorted(p.name for p in dst.iterdir()) == ["manifest.json", "shard-00000.fls"]


def test_schema_error_escaping_with_block_aborts(tmp_path):
    dst = tmp_path / "ds"
    with pytest.raises(fastload.SchemaError, match="'i'"):
        with fastload.Writer(dst, {"i": "uint8"}, block_size=16) as w:
            for i in range(300):
                w.write({"i": i})  # 256 does not fit
    assert not (dst / "manifest.json").exists() and tmp_files(dst) == []


def test_abort_discards_the_open_shard(tmp_path):
    dst = tmp_path / "ds"
    w = fastload.Writer(dst, {"i": "int64"}, block_size=16)
    for i in range(10):
        w.write({"i": i})
    assert tmp_files(dst)  # the shard being written is a temporary file
    w.abort()
    assert tmp_files(dst) == [] and not (dst / "manifest.json").exists()
    with pytest.raises(ValueError):
        w.write({"i": 1})


# --------------------------------------------------------------------------- parts


def write_part(dst, k: int, rng: range, schema=None, **kw):
    with fastload.Writer(
        dst, schema or INDEX_SCHEMA, part=k, block_size=200, shard_size=900, **kw
    ) as w:
        for i in rng:
            w.write(index_record(i))


def test_parts_merge_into_one_manifest_in_part_order(tmp_path):
    dst = tmp_path / "ds"
    ranges = [range(0, 30), range(30, 31), range(31, 75)]
    for k in (2, 0, 1):  # parts finish in any order
        write_part(dst, k, ranges[k])
        assert not (dst / "manifest.json").exists()
    assert sorted(p.name for p in (dst / "_parts").iterdir()) == [
        "part-00000.json",
        "part-00001.json",
        "part-00002.json",
    ]
    manifest = merge_parts(dst, 3)
    assert not (dst / "_parts").exists()
    paths = [s.path for s in manifest.shards]
    assert [p.split("-")[1] for p in paths] == sorted(p.split("-")[1] for p in paths)
    assert paths[0] == "shard-00000-0000.fls" and paths[-1].startswith("shard-00002-")
    assert len(paths) > 3 and manifest.records == 75
    with fastload.Dataset(dst) as ds:
        assert len(ds) == 75
        for i, rec in enumerate(ds):
            assert_record(rec, index_record(i))
        assert ds.get_batch([74, 30, 0])["i"].tolist() == [74, 30, 0]


def test_parts_with_an_empty_part(tmp_path):
    dst = tmp_path / "ds"
    write_part(dst, 0, range(0, 10))
    write_part(dst, 1, range(0))
    write_part(dst, 2, range(10, 12))
    assert merge_parts(dst, 3).records == 12
    assert read_i(dst) == list(range(12))


def test_merge_rejects_mismatched_schemas(tmp_path):
    dst = tmp_path / "ds"
    write_part(dst, 0, range(3))
    with fastload.Writer(dst, {"i": "int64"}, part=1) as w:
        w.write({"i": 3})
    with pytest.raises(ManifestError, match="part 1 has schema") as e:
        merge_parts(dst, 2)
    assert "part-00001.json" in str(e.value)
    assert not (dst / "manifest.json").exists()


def test_merge_rejects_a_missing_part(tmp_path):
    dst = tmp_path / "ds"
    write_part(dst, 0, range(3))
    write_part(dst, 2, range(3, 6))
    with pytest.raises(ManifestError, match="part 1 of 3 was never finished"):
        merge_parts(dst, 3)
    assert not (dst / "manifest.json").exists()
    with pytest.raises(ManifestError, match="nothing to merge"):
        merge_parts(tmp_path / "empty", 0)


def test_failed_part_leaves_no_part_file(tmp_path):
    dst = tmp_path / "ds"
    with pytest.raises(Boom):
        with fastload.Writer(dst, INDEX_SCHEMA, part=0, block_size=100) as w:
            w.write(index_record(0))
            raise Boom()
    assert not (dst / "_parts" / "part-00000.json").exists() and tmp_files(dst) == []


# --------------------------------------------------------------------------- determinism


def write_all(dst, **kw):
    with fastload.Writer(dst, INDEX_SCHEMA, block_size=250, shard_size=1500, **kw) as w:
        for i in range(80):
            w.write(index_record(i))


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_same_records_give_byte_identical_files(tmp_path, compression):
    write_all(tmp_path / "a", compression=compression)
    write_all(tmp_path / "b", compression=compression)
    a, b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert len(a) > 4 and list(a) == list(b)
    for name in a:
        assert a[name] == b[name], name
    fingerprints = {fastload.Dataset(tmp_path / d).fingerprint for d in "ab"}
    assert len(fingerprints) == 1


def test_parts_are_deterministic_too(tmp_path):
    for d in ("a", "b"):
        for k in (1, 0) if d == "a" else (0, 1):
            write_part(tmp_path / d, k, range(k * 20, k * 20 + 20))
        merge_parts(tmp_path / d, 2)
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")


def test_numpy_and_python_values_write_the_same_bytes(tmp_path):
    schema = {"i": "int32", "x": "float64", "a": "int16[2]"}
    with fastload.Writer(tmp_path / "a", schema) as w:
        w.write({"i": 3, "x": 1.5, "a": [1, 2]})
    with fastload.Writer(tmp_path / "b", schema) as w:
        w.write({"i": np.int8(3), "x": np.float32(1.5), "a": np.array([1, 2], np.int64)})
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")


# --------------------------------------------------------------------------- destination


def test_destination_with_other_files_is_refused(tmp_path):
    dst = tmp_path / "ds"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    (dst / "shard-00000.fls").write_bytes(b"old")
    with pytest.raises(ConvertError, match="notes.txt"):
        fastload.Writer(dst, {"i": "int64"})
    with pytest.raises(ConvertError, match="notes.txt"):
        fastload.Writer(dst, {"i": "int64"}, overwrite=True)
    assert (dst / "notes.txt").read_text() == "mine" and (dst / "shard-00000.fls").exists()


def test_destination_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConvertError, match="not a directory"):
        prepare_destination(tmp_path / "f", overwrite=True)


def test_existing_dataset_needs_overwrite(tmp_path):
    dst = tmp_path / "ds"
    write_all(dst)
    before = all_files(dst)
    with pytest.raises(ConvertError, match="already holds a fastload dataset.*overwrite"):
        fastload.Writer(dst, {"i": "int64"})
    assert all_files(dst) == before
    with fastload.Writer(dst, {"i": "int64"}, overwrite=True) as w:
        w.write({"i": 42})
    assert sorted(p.name for p in dst.iterdir()) == ["manifest.json", "shard-00000.fls"]
    assert read_i(dst) == [42]


def test_leftovers_of_an_interrupted_write_are_cleaned(tmp_path):
    dst = tmp_path / "ds"
    dst.mkdir()
    (dst / "shard-00000.fls").write_bytes(b"a finished shard of a dead convert")
    (dst / "shard-00001.fls.1a2b3c4d.tmp").write_bytes(b"half")
    (dst / "manifest.json.99999999.tmp").write_bytes(b"{")
    (dst / "_parts").mkdir()
    (dst / "_parts" / "part-00000.json").write_text("{}")
    prepare_destination(dst, overwrite=False)
    assert list(dst.iterdir()) == []
    prepare_destination(dst, overwrite=False)  # empty: fine
    prepare_destination(tmp_path / "new", overwrite=False)  # missing: fine


def test_parts_do_not_clean_the_destination(tmp_path):
    """Part writers share the destination: they must not remove each other's shards."""
    dst = tmp_path / "ds"
    write_part(dst, 0, range(5))
    write_part(dst, 1, range(5, 9))
    merge_parts(dst, 2)
    assert read_i(dst) == list(range(9))
