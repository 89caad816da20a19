"""How large a compressed block may decompress (docs/reliability.md A11, F10): by default 4 x the
dataset's block size, or a lone record's size; a block claiming more -- 1 GiB in a dataset of
8 KiB blocks -- is refused before anything is allocated for it, by reads and by verify. In a
shard of fixed-size records a block's raw size is exactly what its records take, so a block
claiming more is refused when the shard opens."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fastload
from fastload import ShardFormatError
from fastload.verify import verify_dataset

from .formattools import CODEC_ZSTD, parse_shard, replace_shard, reseal, write_compressed_rows

GIB = 1 << 30


def shard_file(root: Path, s: int = 0) -> Path:
    return root / json.loads((root / "manifest.json").read_text())["shards"][s]["path"]


def forge_raw_size(root: Path, block: int, raw_size: int) -> None:
    """Shard 0's ``block`` claims ``raw_size`` decompressed bytes; every checksum and the
    manifest are recomputed to match, so only the limit stands in the way."""
    p = parse_shard(shard_file(root).read_bytes())
    assert p["blocks"][block]["codec"] == CODEC_ZSTD
    p["blocks"][block]["raw_size"] = raw_size
    replace_shard(root, 0, reseal(p))


def write_var_rows(path: Path, n: int) -> np.ndarray:
    """Blocks as write_compressed_rows's (zstd, eight 1 KiB records in 8 KiB blocks), in the
    layout of an entry per record: the schema has a variable-size field (empty here), so only
    the limit bounds what a block may claim. Returns the token rows (510 each)."""
    rows = (np.arange(n * 510, dtype=np.uint64) * 2654435761 % 1000).astype(np.uint16)
    rows = rows.reshape(n, 510)
    schema = {"tokens": "uint16[510]", "pad": "bytes"}  # 1020 + a var end: 1 KiB records
    with fastload.Writer(path, schema, block_size=8192, compression="zstd") as w:
        for row in rows:
            w.write({"tokens": row, "pad": b""})
    return rows


def peak_while(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("block", [0, 3])
def test_a_block_claiming_a_gibibyte_is_refused_by_default(tmp_path, block):
    root = tmp_path / "z"
    rows = write_var_rows(root, 64)  # 8 KiB blocks of eight 1 KiB rows
    forge_raw_size(root, block, GIB)
    first = 8 * block
    with fastload.Dataset(root) as ds:
        assert ds.max_block_bytes is None and ds.manifest.block_size == 8192

        def read():
            with pytest.raises(ShardFormatError) as e:
                ds[first]
            msg = str(e.value)
            assert msg.startswith(str(shard_file(root)))
            assert f"block {block} would decompress to 1,073,741,824 bytes, more than 32,768" in msg
            assert "4 x the dataset's block size, 8,192" in msg and "max_block_bytes" in msg

        assert peak_while(read) < 4 << 20
        np.testing.assert_array_equal(
            ds[first + 8 if block == 0 else 0]["tokens"], rows[0 if block else 8]
        )
    report = {}
    assert peak_while(lambda: report.update(r=verify_dataset(str(root)))) < 4 << 20
    assert not report["r"].ok and "would decompress to 1,073,741,824" in report["r"].problems[0]


def test_an_explicit_limit_replaces_the_default(tmp_path):
    root = tmp_path / "z"
    write_var_rows(root, 64)
    forge_raw_size(root, 0, 40_000)  # past 4 x 8 KiB; the frame itself holds 8 KiB
    with fastload.Dataset(root) as ds:
        with pytest.raises(ShardFormatError, match="more than 32,768 "):
            ds[0]
    with fastload.Dataset(root, max_block_bytes="64KiB") as ds:  # let through: the frame's
        with pytest.raises(fastload.CorruptRecordError, match="zstd frame declares 8192"):
            ds[0]  # own size is checked next


@pytest.mark.parametrize("block", [0, 3, 7])
def test_a_fixed_size_block_claiming_more_than_its_records_is_refused_at_open(tmp_path, block):
    root = tmp_path / "z"
    write_compressed_rows(root, 64)  # fixed-size records: 8 KiB blocks of eight 1 KiB rows
    forge_raw_size(root, block, GIB)
    with fastload.Dataset(root) as ds:

        def read():
            with pytest.raises(ShardFormatError) as e:
                ds[63 - 8 * block]  # any record: the shard does not open
            msg = str(e.value)
            assert msg.startswith(str(shard_file(root)))
            assert (
                f"block {block} has 1073741824 raw bytes, but 8 records of 1024 bytes take 8192"
                in msg
            )

        assert peak_while(read) < 4 << 20
    report = verify_dataset(str(root))
    assert not report.ok and f"block {block} has 1073741824 raw bytes" in report.problems[0]


def test_a_lone_large_record_reads_by_default(tmp_path):
    """A record larger than the block size gets a block of its own, compressed like any
    other: it may be as large as the record, however many block sizes that is."""
    root = tmp_path / "big"
    big = np.tile(np.arange(1000, dtype=np.uint16), 100)  # 200 KB, compresses well
    with fastload.Writer(root, {"a": "uint16[?]"}, block_size=4096) as w:
        w.write({"a": big[:10]})
        w.write({"a": big})
        w.write({"a": big[:20]})
    p = parse_shard(shard_file(root).read_bytes())
    lone = next(b for b in p["blocks"] if b["n_records"] == 1 and b["raw_size"] > 4 * 4096)
    assert lone["codec"] == CODEC_ZSTD
    with fastload.Dataset(root) as ds:
        np.testing.assert_array_equal(ds[1]["a"], big)
        assert ds[2]["a"].tolist() == big[:20].tolist()
    assert verify_dataset(str(root)).ok


def test_a_lone_small_record_in_a_huge_block_is_refused(tmp_path):
    """The lone-record allowance is the record's size, not whatever the block claims."""
    root = tmp_path / "z"
    with fastload.Writer(root, {"a": "uint16[?]"}, block_size=64) as w:
        for k in range(4):
            w.write({"a": np.zeros(100, np.uint16) + k})  # 200+ bytes: one block each
    p = parse_shard(shard_file(root).read_bytes())
    assert all(b["n_records"] == 1 and b["codec"] == CODEC_ZSTD for b in p["blocks"])
    forge_raw_size(root, 2, GIB)
    with fastload.Dataset(root) as ds:
        assert ds[1]["a"].tolist() == [1] * 100
        with pytest.raises(ShardFormatError, match="block 2 would decompress to 1,073,741,824"):
            ds[2]
