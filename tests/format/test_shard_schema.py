"""A shard must hold records of its manifest's schema: version-2 shards record the schema's
fingerprint in their header, and every record must have the size the schema gives it
(docs/reliability.md A23). Either mismatch is an error naming the shard (and the record);
before, a shard of another schema with the same record size read as if it were this one's."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard

import fastload
from fastload import CorruptRecordError, ShardFormatError
from fastload.format.manifest import UncheckedManifestWarning

from .formattools import (
    CODEC_ZSTD,
    FIXED_SIZE,
    assert_record,
    parse_shard,
    replace_shard,
    reseal,
    schema_hash,
    write_manifest,
)


def write(path: Path, schema: dict, records: list[dict], **kw) -> Path:
    kw.setdefault("compression", "none")
    with fastload.Writer(path, schema, **kw) as w:
        for rec in records:
            w.write(rec)
    return path


def shard_file(root: Path, s: int = 0) -> Path:
    return root / json.loads((root / "manifest.json").read_text())["shards"][s]["path"]


def test_a_shard_written_with_another_schema_is_refused(tmp_path):
    """Same record size, other field names: without the fingerprint, the records of `b` would
    read silently as `a`'s."""
    a = write(tmp_path / "a", {"i": "int64"}, [{"i": k} for k in range(5)])
    b = write(tmp_path / "b", {"j": "int64"}, [{"j": 100 + k} for k in range(5)])
    target = replace_shard(a, 0, shard_file(b).read_bytes())  # manifest resealed to match
    with fastload.Dataset(a) as ds:
        with pytest.raises(ShardFormatError) as e:
            ds[0]
    msg = str(e.value)
    assert msg.startswith(f"{target}: was written with a schema of fingerprint")
    assert f"{schema_hash({'j': 'int64'}):016x}" in msg
    assert f"{schema_hash({'i': 'int64'}):016x}" in msg and "{'i': 'int64'}" in msg


def test_a_version_1_shard_has_no_fingerprint_to_check(tmp_path):
    a = write(tmp_path / "a", {"i": "int64"}, [{"i": k} for k in range(5)])
    p = parse_shard(shard_file(a).read_bytes())
    replace_shard(a, 0, reseal(p, version=1, schema_hash=0))
    with fastload.Dataset(a) as ds:
        assert [ds[k]["i"] for k in range(5)] == list(range(5))
    replace_shard(a, 0, reseal(p, version=1))  # version 1 with bytes in the reserved field
    with fastload.Dataset(a) as ds:
        with pytest.raises(ShardFormatError, match="reserved bytes"):
            ds[0]


def rows(n: int) -> list[dict]:
    return [{"x": np.arange(64, dtype=np.uint16) + k, "i": k} for k in range(n)]


def test_a_version_1_manifest_with_a_shortened_shape_is_caught_by_the_record_size(tmp_path):
    """The silent corruption fuzzing found, in a version-1 dataset (no manifest checksum): a bit
    flip makes `uint16[64]` read as `uint16[60]`. Each record is longer than the damaged
    schema's size, which is now an error naming the shard and record."""
    root = write(tmp_path / "ds", {"x": "uint16[64]", "i": "int32"}, rows(6), shard_size=400)
    n_shards = len(json.loads((root / "manifest.json").read_text())["shards"])
    assert n_shards > 1
    for s in range(n_shards):  # version-1 shards, like the manifest
        p = parse_shard(shard_file(root, s).read_bytes())
        replace_shard(root, s, reseal(p, version=1, schema_hash=0))
    m = json.loads((root / "manifest.json").read_text())
    m.pop("checksum")
    m["version"] = 1
    m["schema"][0]["type"] = "uint16[60]"
    write_manifest(root, m)
    with pytest.warns(UncheckedManifestWarning):
        ds = fastload.Dataset(root)
    with ds:
        for read in (lambda: ds[0], lambda: ds.get_batch([0, 1])):
            with pytest.raises(CorruptRecordError) as e:
                read()
            msg = str(e.value)
            assert msg.startswith(f"{shard_file(root)}: record 0 (block 0, byte offset 32)")
            assert "is 132 bytes, but records of the manifest's schema are exactly 124" in msg


@pytest.mark.parametrize("grow", [8, 1])
def test_a_record_longer_than_its_fixed_size_is_refused(tmp_path, grow):
    """A forged shard (checksums recomputed) whose record 2 claims more bytes than its schema's
    fixed size: refused when the shard opens, naming shard and record, not read short. (An
    entry per record, as version-2 shards were first written: the fixed layout has one size.)"""
    root = write(tmp_path / "ds", {"i": "int64"}, [{"i": k} for k in range(5)])
    p = parse_shard(shard_file(root).read_bytes())
    p["records"][2]["length"] += grow  # still inside its block
    replace_shard(root, 0, reseal(p, flags=0))
    with fastload.Dataset(root) as ds:
        with pytest.raises(CorruptRecordError) as e:
            ds[0]
    msg = str(e.value)
    assert msg.startswith(f"{shard_file(root)}: record 2 (block 0, byte offset")
    assert f"is {8 + grow} bytes, but records of the manifest's schema are exactly 8" in msg


@pytest.mark.parametrize("size", [16, 4, 0])
def test_a_fixed_size_shard_of_another_record_size_is_refused(tmp_path, size):
    """A shard of the fixed layout whose records are not its manifest schema's size (forged:
    fingerprint and checksums recomputed to match): refused at open, naming record 0."""
    root = write(tmp_path / "ds", {"i": "int64"}, [{"i": k} for k in range(5)])
    schema = {"v": f"uint8[{size}]"}
    other = write(tmp_path / "other", schema, [{"v": np.full(size, k, np.uint8)} for k in range(5)])
    p = parse_shard(shard_file(other).read_bytes())
    assert p["flags"] & FIXED_SIZE and p["record_size"] == size  # (small: grouped checksums)
    replace_shard(root, 0, reseal(p, schema_hash=schema_hash({"i": "int64"})))
    with fastload.Dataset(root) as ds:
        with pytest.raises(CorruptRecordError) as e:
            ds[3]
    msg = str(e.value)
    assert msg.startswith(f"{shard_file(root)}: record 0 (block 0, byte offset 32)")
    assert f"is {size} bytes, but records of the manifest's schema are exactly 8" in msg


def test_a_record_shorter_than_its_fixed_part_is_refused_at_open(tmp_path):
    root = write(
        tmp_path / "ds", {"i": "int64", "s": "str"}, [{"i": k, "s": "ab"} for k in range(5)]
    )
    p = parse_shard(shard_file(root).read_bytes())
    p["records"][3]["length"] = 11  # the fixed part (8) and one var end (4) need 12
    replace_shard(root, 0, reseal(p))
    with fastload.Dataset(root) as ds:
        with pytest.raises(CorruptRecordError, match=r"record 3 .*are at least 12 bytes"):
            ds[4]


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_bytes_after_the_last_variable_field_are_an_error(tmp_path, compression):
    """A record of a schema with variable-size fields ends with its last one: trailing bytes
    (behind valid checksums) are reported as malformed, by ds[i] and get_batch."""
    records = [{"i": k, "s": "x" * 40} for k in range(6)]
    root = write(tmp_path / "ds", {"i": "int64", "s": "str"}, records, compression=compression)
    p = parse_shard(shard_file(root).read_bytes())
    assert {b["codec"] for b in p["blocks"]} == {CODEC_ZSTD if compression == "zstd" else 0}
    raws = [
        zstandard.ZstdDecompressor().decompress(s) if b["codec"] == CODEC_ZSTD else bytes(s)
        for b, s in zip(p["blocks"], p["stored"], strict=True)
    ]
    rec = p["records"][4]
    at = rec["offset"] + 8  # the var end of field s: 40 -> 32 leaves 8 bytes unclaimed
    raw = bytearray(raws[rec["block"]])
    raw[at : at + 4] = struct.pack("<I", 32)
    raws[rec["block"]] = bytes(raw)
    replace_shard(root, 0, reseal({**p, "raw": raws}))
    with fastload.Dataset(root) as ds:
        for read in (lambda: ds[4], lambda: ds.get_batch([0, 4])):
            with pytest.raises(CorruptRecordError, match=r"record 4 .*is malformed") as e:
                read()
            assert str(e.value).startswith(str(shard_file(root)))
        assert_record(ds[3], records[3])
        assert_record(ds[5], records[5])


def test_a_copied_dataset_with_the_same_schema_reads(tmp_path):
    """The fingerprint is of the schema, not of the dataset: shards move between datasets of
    one schema (merge_parts relies on it)."""
    a = write(tmp_path / "a", {"i": "int64"}, [{"i": k} for k in range(5)])
    b = write(tmp_path / "b", {"i": "int64"}, [{"i": 100 + k} for k in range(5)])
    shutil.copy(shard_file(b), tmp_path / "b.fls")
    replace_shard(a, 0, (tmp_path / "b.fls").read_bytes())
    with fastload.Dataset(a) as ds:
        assert [ds[k]["i"] for k in range(5)] == [100 + k for k in range(5)]
