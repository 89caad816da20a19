"""The committed format-v2 dataset in data/v2/ (written by make_golden.py) reads with the current
code and gives exactly the values it was written with; its manifest checksum and its shards'
schema fingerprints are the ones docs/format.md defines, computed here independently."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import fastload
from fastload.format.imageinfo import EncodedImage
from fastload.verify import verify_dataset

from .formattools import (
    CODEC_NONE,
    CODEC_ZSTD,
    assert_files_unchanged,
    manifest_checksum,
    parse_shard,
    schema_hash,
)
from .make_golden import (
    PNG_3X2,
    V2_DIR,
    V2_LARGE,
    V2_OPTIONS,
    V2_RANDOM,
    V2_RECORDS,
    V2_SCHEMA,
    WEBP_3X2,
    v2_record,
)

# The committed files, never regenerated: if one of these fails, a change rewrote the golden
# data instead of adding data/v3/ -- restore data/v2/ from git.
V2_SHA256 = {
    "manifest.json": "52ec50799b5195bf87b9ea0183273aff577b054112d3d6504a33d631755780f5",
    "shard-00000.fls": "7aec5fdf863a342bb291519c4de19de644b14f7180aba767439962a9069ae8e2",
    "shard-00001.fls": "f943063bf37b88990ab6d4b8e2a0a75a70f4ae4825a62cfb4c9ec6e2dfa32239",
    "shard-00002.fls": "3decee5f3ff68f0a6edb9804160f054052933d32575b2cb93fa6a263f1d10226",
}


def test_golden_v2_files_are_unchanged():
    assert_files_unchanged(V2_DIR, V2_SHA256)


@pytest.fixture(scope="module")
def v2():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a version-2 dataset opens without a warning
        ds = fastload.Dataset(V2_DIR)
    with ds:
        yield ds


def expected(i: int) -> dict:
    rec = v2_record(i)
    img = rec["img"]
    assert img in (PNG_3X2, WEBP_3X2)
    rec["img"] = EncodedImage(img, "png" if img == PNG_3X2 else "webp", 2, 3)
    return rec


def test_golden_v2_manifest_and_headers(v2):
    m = json.loads((V2_DIR / "manifest.json").read_text())
    assert m["version"] == 2 and m["checksum"] == manifest_checksum(m)
    assert v2.manifest.version == 2 and len(v2) == V2_RECORDS == m["records"]
    assert v2.schema.to_dict() == V2_SCHEMA
    assert {k: v2.manifest.options[k] for k in V2_OPTIONS} == V2_OPTIONS
    blocks = []
    for s in v2.shards:
        p = parse_shard((V2_DIR / s.path).read_bytes())
        assert p["version"] == 2 == p["trailer"]["version"]
        assert p["schema_hash"] == schema_hash(V2_SCHEMA)
        blocks += p["blocks"]
    assert {b["codec"] for b in blocks} == {CODEC_NONE, CODEC_ZSTD}
    assert any(b["n_records"] > 1 for b in blocks)
    # the lone record larger than 4 block sizes, compressed: within the default limit
    assert any(
        b["n_records"] == 1 and b["codec"] == CODEC_ZSTD and b["raw_size"] > 4 * 700 for b in blocks
    )


def test_golden_v2_values(v2):
    for i in range(V2_RECORDS):
        got, exp = v2[i], expected(i)
        assert list(got) == list(V2_SCHEMA)
        for k, v in exp.items():
            if isinstance(v, np.ndarray):
                assert got[k].dtype == v.dtype and np.array_equal(got[k], v), (i, k)
            else:
                assert type(got[k]) is type(v) and got[k] == v, (i, k, got[k], v)
    # literal values, in case v2_record itself is ever edited
    assert v2[V2_LARGE]["blob"][:12] == b"fastload-v2 " and len(v2[V2_LARGE]["blob"]) == 4000
    assert len(v2[V2_RANDOM]["blob"]) == 2000 and v2[V2_RANDOM]["blob"][:4].hex() == "f57389cb"
    assert v2[3]["grid"].tolist() == [[0.0, -3.0], [-6.0, -9.0], [-12.0, -15.0]]
    assert v2[4]["grid"].shape == (0, 2) and v2[12]["pair"].tolist() == [12, 65523]
    assert v2[11]["i"] == 11_000_028 and v2[9]["toks"].tolist() == [9, 1009, 2009, 3009]


def test_golden_v2_batch_and_verify(v2):
    idx = [12, 0, V2_LARGE, V2_RANDOM, -1]
    batch = v2.get_batch(idx)
    assert batch["pair"].tolist() == [expected(i % V2_RECORDS)["pair"].tolist() for i in idx]
    assert batch["blob"] == [expected(i % V2_RECORDS)["blob"] for i in idx]
    assert [g.shape for g in batch["grid"]] == [(0, 2), (0, 2), (3, 2), (2, 2), (0, 2)]
    assert verify_dataset(str(V2_DIR)).ok
