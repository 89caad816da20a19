"""The committed format-v3 dataset in data/v3/ (written by make_golden.py) reads with the current
code and gives exactly the values it was written with: its JPEGs (image format id 4) come back
as the very bytes written, with the entropy index stored after them in the layout
docs/format.md gives, and a crop decoded through that index is the crop decoded without it."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import fastload
from fastload import _core
from fastload.decode import decode_crop_into
from fastload.format.imageinfo import EncodedImage
from fastload.verify import verify_dataset

from .formattools import (
    assert_files_unchanged,
    manifest_checksum,
    parse_shard,
    raw_block,
    schema_hash,
)
from .make_golden import (
    JPEG_160X96,
    PNG_3X2,
    V3_DIR,
    V3_OPTIONS,
    V3_RECORDS,
    V3_SCHEMA,
    v3_record,
)

# The committed files, never regenerated: if one of these fails, a change rewrote the golden
# data instead of adding data/v4/ -- restore data/v3/ from git.
V3_SHA256 = {
    "manifest.json": "3186c6f28275b7862697db57d7b787aa316268251c13a651d47f0b86966567ff",
    "shard-00000.fls": "66dfa003e3a2f7c0145430fef4c8a7279aafaf62bf264907fa09985e24937734",
    "shard-00001.fls": "fac9f7a7c9efee9fdb4d3059f79903adb8844f043ecc2855dd6baa5f750ae2b3",
    "shard-00002.fls": "198cbd9ca64630e3b2eb48c322a5370c6d7e1bf0ec457033c42edec074e7c999",
}


def test_golden_v3_files_are_unchanged():
    assert_files_unchanged(V3_DIR, V3_SHA256)


@pytest.fixture(scope="module")
def v3():
    with fastload.Dataset(V3_DIR) as ds:
        yield ds


def expected_image(i: int) -> EncodedImage:
    img = v3_record(i)["img"]
    if img == JPEG_160X96:
        return EncodedImage(img, "jpeg", 96, 160)
    return EncodedImage(img, "png" if img == PNG_3X2 else "webp", 2, 3)


def test_golden_v3_manifest_and_headers(v3):
    m = json.loads((V3_DIR / "manifest.json").read_text())
    assert m["version"] == 3 and m["checksum"] == manifest_checksum(m)
    assert v3.manifest.version == 3 and len(v3) == V3_RECORDS == m["records"]
    assert v3.schema.to_dict() == V3_SCHEMA
    assert {k: v3.manifest.options[k] for k in V3_OPTIONS} == V3_OPTIONS
    for s in v3.shards:
        p = parse_shard((V3_DIR / s.path).read_bytes())
        assert p["version"] == 3 == p["trailer"]["version"]
        assert p["schema_hash"] == schema_hash(V3_SCHEMA)


def test_golden_v3_values(v3):
    for i in range(V3_RECORDS):
        got, exp = v3[i], v3_record(i)
        assert list(got) == list(V3_SCHEMA)
        assert got["img"] == expected_image(i), i
        assert bytes(got["img"].data) == exp["img"], i
        for k in ("i", "blob", "name", "meta"):
            assert got[k] == exp[k], (i, k)
        assert np.array_equal(got["grid"], exp["grid"]) and np.array_equal(got["pair"], exp["pair"])
    assert verify_dataset(str(V3_DIR), deep=True).ok


def test_golden_v3_jpegs_carry_their_index_in_the_documented_layout(v3):
    index = _core.jpeg_entropy_index(JPEG_160X96)
    assert index is not None and index[:4] == b"FJX1"
    # the documented header: JPEG size, MCU size, rows and columns, components, step
    assert struct.unpack_from("<I", index, 4)[0] == len(JPEG_160X96)
    assert struct.unpack_from("<4H", index, 16) == (16, 16, 6, 10)
    assert (index[24], index[25]) == (3, 4)
    assert len(index) == 32 + 6 * 3 * (4 + 2 * 3)  # 6 rows of 3 entries
    stored = JPEG_160X96 + index + struct.pack("<I", len(index))
    found = 0
    for s in v3.shards:
        p = parse_shard((V3_DIR / s.path).read_bytes())
        assert len(p["blocks"]) == len(p["stored"])
        found += sum(raw_block(b, p["stored"][k]).count(stored) for k, b in enumerate(p["blocks"]))
    assert found == sum(1 for i in range(V3_RECORDS) if i % 2 == 0)
    for i in range(V3_RECORDS):
        img = v3[i]["img"]
        assert (img.entropy_index == index) if i % 2 == 0 else img.entropy_index is None


def test_golden_v3_crop_through_the_stored_index_is_the_plain_crop(v3):
    if "libjpeg-region" not in fastload.decode.available_jpeg_backends():
        pytest.skip("built without the JPEG region decoder")
    img = v3[0]["img"]
    crop = (50.0, 70.0, 40.0, 80.0)  # bottom right: the index leaves most MCUs out
    plain, indexed = np.empty((2, 32, 32, 3), np.uint8)
    args = dict(width=160, height=96, jpeg_backend="libjpeg-region")
    decode_crop_into(img.data, plain, crop, False, **args)
    decode_crop_into(img.data, indexed, crop, False, entropy_index=img.entropy_index, **args)
    assert np.array_equal(plain, indexed)
    out = np.empty(96 * 160 * 3, np.uint8)
    assert _core.decode_jpeg_region(img.data, 1, 96, 160, 48, 68, 92, 152, out, img.entropy_index)[
        8
    ]
