"""The committed format-v2 dataset of the fixed layout in data/v2-fixed/ (written by
make_golden.py: a schema of fixed-size fields only, so a checksum per record and places computed
from the block table) reads with the current code and gives exactly the values it was written
with; its shards' layout is the one docs/format.md defines, parsed here independently."""

from __future__ import annotations

import json
import struct
import warnings

import numpy as np
import pytest

import fastload
from fastload.verify import verify_dataset

from .formattools import (
    CODEC_NONE,
    CODEC_ZSTD,
    FIXED_SIZE,
    assert_files_unchanged,
    hash64,
    parse_shard,
)
from .make_golden import (
    V2_FIXED_DIR,
    V2_FIXED_OPTIONS,
    V2_FIXED_RECORDS,
    V2_FIXED_SCHEMA,
    v2_fixed_record,
)

# The committed files, never regenerated: if one of these fails, a change rewrote the golden
# data instead of adding a new directory -- restore data/v2-fixed/ from git.
V2_FIXED_SHA256 = {
    "manifest.json": "a3caffe7db360161fbbf095639d7beb4c32a8bddf29ac5e80fc419eef76cee6c",
    "shard-00000.fls": "bac51ab57c8d70dec805ac8fd447ef855596dc58c8ebe4c90b471f44527428cc",
    "shard-00001.fls": "dded931b3610df4737b6c460006978a53670dcb868e93cd579ba763854e89e96",
}
RECORD_SIZE = 8 + 1 + 4 + 1 + 24 + 4 + 10 + 1024  # the schema's fixed part


def test_golden_v2_fixed_files_are_unchanged():
    assert_files_unchanged(V2_FIXED_DIR, V2_FIXED_SHA256)


@pytest.fixture(scope="module")
def fixed():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a version-2 dataset opens without a warning
        ds = fastload.Dataset(V2_FIXED_DIR)
    with ds:
        yield ds


def test_golden_v2_fixed_layout(fixed):
    m = json.loads((V2_FIXED_DIR / "manifest.json").read_text())
    assert m["version"] == 2 and len(fixed) == V2_FIXED_RECORDS == m["records"]
    assert fixed.schema.to_dict() == V2_FIXED_SCHEMA
    assert {k: fixed.manifest.options[k] for k in V2_FIXED_OPTIONS} == V2_FIXED_OPTIONS
    codecs = set()
    for s in fixed.shards:
        data = (V2_FIXED_DIR / s.path).read_bytes()
        p = parse_shard(data)
        assert p["flags"] == FIXED_SIZE == p["trailer"]["flags"]
        assert p["record_size"] == RECORD_SIZE
        n_blocks, n_records = len(p["blocks"]), p["trailer"]["n_records"]
        # 4 bytes of index per record, beside 48 per block and the 8-byte record size
        assert p["trailer"]["index_size"] == 48 * n_blocks + 8 + 4 * n_records
        # every record's checksum is its bytes' (low 32 bits of XXH64), read from the table
        table = p["trailer"]["index_offset"] + 48 * n_blocks
        assert struct.unpack_from("<Q", data, table)[0] == RECORD_SIZE
        sums = struct.unpack_from(f"<{n_records}I", data, table + 8)
        reader = fixed.shard_reader(fixed.shards.index(s))
        for k, checksum in enumerate(sums):
            rec = reader.record(k)
            assert len(rec) == RECORD_SIZE
            assert checksum == hash64(bytes(rec)) & 0xFFFFFFFF, (s.path, k)
        counts = [b["n_records"] for b in p["blocks"]]
        assert counts[:-1] == [3] * (len(counts) - 1) and 1 <= counts[-1] <= 3
        codecs |= {b["codec"] for b in p["blocks"]}
    assert codecs == {CODEC_NONE, CODEC_ZSTD}


def test_golden_v2_fixed_values(fixed):
    for i in range(V2_FIXED_RECORDS):
        got, exp = fixed[i], v2_fixed_record(i)
        assert list(got) == list(V2_FIXED_SCHEMA)
        for k, v in exp.items():
            if isinstance(v, np.ndarray):
                assert got[k].dtype == v.dtype and np.array_equal(got[k], v), (i, k)
            else:
                assert type(got[k]) is type(v) and got[k] == v, (i, k, got[k], v)
    # literal values, in case v2_fixed_record itself is ever edited
    assert fixed[19]["i"] == 19 * 1_000_003 - 5 and fixed[5]["toks"].tolist()[:2] == [5, 1005]
    assert fixed[4]["noise"].tobytes() == bytes([4]) * 1024
    assert fixed[0]["noise"][:4].tobytes().hex() == "f82323a5"


def test_golden_v2_fixed_batch_and_verify(fixed):
    idx = [19, 0, 7, 12, -1]
    batch = fixed.get_batch(idx)
    want = [v2_fixed_record(i % V2_FIXED_RECORDS) for i in idx]
    assert batch["i"].tolist() == [w["i"] for w in want]
    assert np.array_equal(batch["noise"], np.stack([w["noise"] for w in want]))
    assert verify_dataset(str(V2_FIXED_DIR)).ok
