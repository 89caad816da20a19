"""Old files still read: the committed format-v1 dataset in data/v1/ (written by make_golden.py)
is read with the current code and must give exactly the values it was written with."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import fastload
from fastload.format.imageinfo import EncodedImage
from fastload.format.manifest import UncheckedManifestWarning
from fastload.verify import verify_dataset

from .formattools import assert_files_unchanged, parse_shard
from .make_golden import PNG_3X2, V1_DIR, V1_OPTIONS, V1_RECORDS, V1_SCHEMA, WEBP_3X2, v1_record

# The committed files. They are never regenerated: if one of these fails, a change rewrote the
# golden data instead of adding data/v2/ -- restore data/v1/ from git.
V1_SHA256 = {
    "manifest.json": "dbcd0805dd446d5313126290bcbc7d541343ed891d1a8b6f553dce5920d3cfec",
    "shard-00000.fls": "6580575ab516b54a40746781a24f3bc9f7a9169eee1a02f3471e592269696ec8",
    "shard-00001.fls": "4ade6fdc0036e5c67d121ac3ff3351a15814a85570a609d32b39943b89da4b35",
    "shard-00002.fls": "b04e8f4faf384294a5d3dd208e28c3eecb3316b237bbf9e8983d4a2bc6575ce6",
    "shard-00003.fls": "661d9d0e4841ea7f9aa382eb63843f1c97be9c9bca4b399c513789539109eb97",
}


def test_golden_files_are_unchanged():
    assert_files_unchanged(V1_DIR, V1_SHA256)


def open_v1(**kw) -> fastload.Dataset:
    """Version 1 manifests have no checksum: opening one warns, once."""
    with pytest.warns(UncheckedManifestWarning, match="format version 1, whose manifest has no"):
        ds = fastload.Dataset(V1_DIR, **kw)
    return ds


@pytest.fixture(scope="module")
def v1():
    with open_v1() as ds:
        yield ds


def test_golden_v1_warns_once_per_open():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fastload.Dataset(V1_DIR) as ds:
            for i in range(len(ds)):
                ds[i]
    assert [w.category for w in caught] == [UncheckedManifestWarning]
    assert str(caught[0].message).startswith(str(V1_DIR / "manifest.json"))


def expected(i: int) -> dict:
    rec = v1_record(i)
    img = rec["img"]
    rec["img"] = EncodedImage(img, "png" if img == PNG_3X2 else "webp", 2, 3)
    assert img in (PNG_3X2, WEBP_3X2)
    return rec


def test_golden_v1_manifest(v1):
    assert v1.manifest.version == 1 and len(v1) == V1_RECORDS
    assert v1.schema.to_dict() == V1_SCHEMA
    assert {k: v1.manifest.options[k] for k in V1_OPTIONS} == V1_OPTIONS
    assert len(v1.shards) == 4
    codecs = {
        b["codec"] for s in v1.shards for b in parse_shard((V1_DIR / s.path).read_bytes())["blocks"]
    }
    assert codecs == {0, 1}  # raw and zstd blocks both present
    assert v1.fingerprint == "xxh64:d59500d7886a6621"


def test_golden_v1_values(v1):
    for i in range(V1_RECORDS):
        got, exp = v1[i], expected(i)
        assert list(got) == list(V1_SCHEMA)
        for k, v in exp.items():
            if isinstance(v, np.ndarray):
                assert got[k].dtype == v.dtype and np.array_equal(got[k], v), (i, k)
            else:
                assert type(got[k]) is type(v) and got[k] == v, (i, k, got[k], v)
    # a few literal values, in case v1_record itself is ever edited
    assert v1[0]["i"] == -5 and v1[11]["i"] == 11_000_028
    assert v1[3]["name"] == "deux ✓deux ✓" and v1[4]["name"] == "🧪"
    assert v1[5]["blob"] == b"\x05" * 50 and len(v1[6]["blob"]) == 46
    assert v1[6]["blob"][:8].hex() == "1070fa1c85b278bc"
    assert v1[0]["blob"][:8].hex() == "58ee5c8af8112f2c"
    assert v1[7]["meta"] == {"i": 7, "tags": ["a"], "nested": {"ok": False, "n": None}}
    assert v1[10]["vec"].tolist() == [10.0, -5.0, 1024.0] and v1[2]["f32"] == -1.0
    assert v1[9]["toks"].tolist() == [9, 1009, 2009, 3009] and v1[5]["toks"].tolist() == []
    assert v1[1]["img"].decode().shape == (2, 3, 3)
    assert math.isclose(v1[1]["f32"], -1.25) and v1[4]["flag"] and v1[1]["u8"] == 37


def test_golden_v1_batch_and_verify(v1):
    idx = [11, 0, 5, 5, -1]
    batch = v1.get_batch(idx)
    assert batch["i"].tolist() == [expected(i % V1_RECORDS)["i"] for i in idx]
    assert batch["vec"].shape == (5, 3) and batch["vec"][1].tolist() == [0.0, -0.0, 1.0]
    assert batch["blob"] == [expected(i % V1_RECORDS)["blob"] for i in idx]
    assert [im.format for im in batch["img"]] == ["webp", "png", "webp", "webp", "webp"]
    with pytest.warns(UncheckedManifestWarning):
        assert verify_dataset(str(V1_DIR)).ok
