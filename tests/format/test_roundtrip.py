"""Write -> read round trips of every field type (docs/reliability.md A20), and the on-disk layout
checked against docs/format.md with an independent parser (tests/format/formattools.py)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import zstandard
from PIL import Image

import fastload
from fastload.format.imageinfo import EncodedImage, probe_image
from fastload.format.schema import SCALAR_DTYPES

from .formattools import (
    CODEC_NONE,
    CODEC_ZSTD,
    MAGIC,
    hash64,
    index_bytes,
    manifest_checksum,
    parse_shard,
    raw_block,
    schema_hash,
    values_equal,
)

NUMERIC = [d for d in SCALAR_DTYPES if d != "bool"]


def extremes(dtype: str) -> list:
    """Min, max and a few special values of a numeric dtype, as the reader returns them."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return [int(info.min), int(info.max), 0, 1, int(info.max) - 1]
    info = np.finfo(dt)
    return [
        float(info.min),
        float(info.max),
        float(info.tiny),
        float(info.smallest_subnormal),
        -0.0,
        float("inf"),
        float("-inf"),
        float("nan"),
    ]


def image(fmt: str, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (w * 9 % 256, h * 5 % 256, 77)).save(buf, fmt)
    return buf.getvalue()


ALL_TYPES = {
    **{f"n_{d}": d for d in NUMERIC},
    "flag": "bool",
    "raw": "bytes",
    "text": "str",
    "doc": "json",
    "fix_u8": "uint8[4]",
    "fix_f64": "float64[2,2]",
    "fix_empty": "int32[0]",
    "var_f32": "float32[?,3]",
    "var_i16": "int16[?,?]",
    "var_u64": "uint64[?]",
    "img": "image",
}
TEXTS = ["", "plain", "héllo wörld", "日本語テキスト", "emoji 🧪🚀", "nul\0inside", "a" * 500]
DOCS = [
    None,
    0,
    -1.5,
    "s",
    [],
    {},
    {"a": {"b": [1, {"c": None, "d": [True, False]}]}},
    [[[[[]]]]],
    {"unicode ✓": ["é", 2**70]},
]
IMAGES = [("JPEG", 8, 5), ("PNG", 3, 9), ("WEBP", 17, 4), ("JPEG", 1, 1), ("PNG", 64, 2)]


def all_types_record(i: int) -> dict:
    rec = {}
    for d in NUMERIC:
        vals = extremes(d)
        rec[f"n_{d}"] = vals[i % len(vals)]
    fmt, w, h = IMAGES[i % len(IMAGES)]
    rec.update(
        flag=i % 2 == 1,
        raw=index_bytes(i, n=[0, 1, 7, 200][i % 4]),
        text=TEXTS[i % len(TEXTS)],
        doc=DOCS[i % len(DOCS)],
        fix_u8=np.array([0, 255, i % 256, 1], np.uint8),
        fix_f64=np.array([[i, -i], [np.inf, 0.5]], np.float64),
        fix_empty=np.zeros(0, np.int32),
        var_f32=np.arange(3 * (i % 4), dtype=np.float32).reshape(-1, 3) + i,
        var_i16=np.full(((i % 3), (i % 2) * 5), -i, np.int16),  # zero-size dims on most
        var_u64=np.array([2**64 - 1, 0, i][: i % 4], np.uint64),
        img=image(fmt, w, h),
    )
    return rec


def expected_value(name: str, value):
    """What the reader gives back for a written value."""
    if name == "img":
        info = probe_image(value)
        return EncodedImage(value, info.format, info.height, info.width)
    if name.startswith("n_float") and isinstance(value, float):
        return float(np.dtype(name[2:]).type(value))  # read back at the field's precision
    return value


def check(got: dict, i: int) -> None:
    rec = all_types_record(i)
    assert list(got) == list(ALL_TYPES)
    for k, v in rec.items():
        exp = expected_value(k, v)
        if isinstance(exp, float) and math.isnan(exp):
            assert isinstance(got[k], float) and math.isnan(got[k]), (i, k)
        elif isinstance(exp, np.ndarray):
            assert values_equal(got[k], exp), (i, k, got[k], exp)
        elif isinstance(exp, float) and exp == 0:
            assert got[k] == 0 and math.copysign(1, got[k]) == math.copysign(1, exp), (i, k)
        else:
            assert type(got[k]) is type(exp) and got[k] == exp, (i, k, got[k], exp)


N_ALL = 40


@pytest.fixture(scope="module", params=["zstd", "none"])
def all_types_ds(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("alltypes") / request.param
    with fastload.Writer(
        path, ALL_TYPES, compression=request.param, block_size=900, shard_size=5000
    ) as w:
        for i in range(N_ALL):
            w.write(all_types_record(i))
    ds = fastload.Dataset(path)
    yield ds
    ds.close()


def test_every_field_type_round_trips(all_types_ds):
    ds = all_types_ds
    assert len(ds) == N_ALL and len(ds.shards) > 2
    for i in range(N_ALL):
        check(ds[i], i)
    for i, rec in enumerate(ds):
        check(rec, i)
    codecs = {int(c) for s in range(len(ds.shards)) for c in ds.shard_reader(s).blocks["codec"]}
    if ds.manifest.options["compression"] == "none":
        assert codecs == {CODEC_NONE}
    else:
        assert CODEC_ZSTD in codecs


def test_every_field_type_through_get_batch(all_types_ds):
    ds = all_types_ds
    idx = [N_ALL - 1, 0, 7, 7, -3, 13, 1, 22]
    batch = ds.get_batch(idx)
    assert list(batch) == list(ALL_TYPES)
    for k, f in ((f.name, f) for f in ds.schema):
        col = batch[k]
        if f.is_fixed:
            assert isinstance(col, np.ndarray) and len(col) == len(idx)
            assert col.dtype == f.np_dtype, k
            if f.kind == "ndarray":
                assert col.shape == (len(idx), *f.shape)
        else:
            assert isinstance(col, list) and len(col) == len(idx)
        for j, i in enumerate(idx):
            single = ds[i][k]
            if f.is_fixed:
                assert values_equal(np.asarray(col[j]), np.asarray(single, dtype=f.np_dtype)), (
                    k,
                    i,
                )
            else:
                assert (
                    values_equal(col[j], single)
                    if isinstance(single, np.ndarray)
                    else col[j] == single
                ), (k, i)


def test_images_keep_format_size_and_decode(all_types_ds):
    for i in range(len(IMAGES)):
        img = all_types_ds[i]["img"]
        fmt, w, h = IMAGES[i]
        assert isinstance(img, EncodedImage)
        assert (img.format, img.width, img.height) == ({"JPEG": "jpeg"}.get(fmt, fmt.lower()), w, h)
        assert img.data == image(fmt, w, h)
        assert img.decode().shape == (h, w, 3)


def test_empty_ish_record(tmp_path):
    schema = {"b": "bytes", "s": "str", "v": "uint8[?]", "z": "int8[0]"}
    with fastload.Writer(tmp_path / "ds", schema, block_size=64) as w:
        for _ in range(3):
            w.write({"b": b"", "s": "", "v": np.zeros(0, np.uint8), "z": np.zeros(0, np.int8)})
    with fastload.Dataset(tmp_path / "ds") as ds:
        assert len(ds) == 3
        for rec in ds:
            assert rec["b"] == b"" and rec["s"] == "" and rec["v"].shape == (0,)
            assert rec["z"].shape == (0,) and rec["z"].dtype == np.int8
        batch = ds.get_batch([2, 0])
        assert batch["b"] == [b"", b""] and batch["z"].shape == (2, 0)
        assert (
            int(ds.shard_reader(0).index.entries()["length"].max()) == 20
        )  # 3 var ends + v's shape


def test_record_larger_than_block_gets_a_block_of_its_own(tmp_path):
    sizes = [10, 20, 5000, 30, 9000, 9001, 1]
    with fastload.Writer(tmp_path / "ds", {"i": "int32", "b": "bytes"}, block_size=256) as w:
        for i, n in enumerate(sizes):
            w.write({"i": i, "b": index_bytes(i, n)})
    with fastload.Dataset(tmp_path / "ds") as ds:
        for i, n in enumerate(sizes):
            assert ds[i] == {"i": i, "b": index_bytes(i, n)}
        r = ds.shard_reader(0)
        for big in (2, 4, 5):
            b = int(r.index.entries()["block"][big])
            assert int(r.blocks["n_records"][b]) == 1 and int(r.index.entries()["offset"][big]) == 0
            assert int(r.blocks["raw_size"][b]) == int(r.index.entries()["length"][big])
        assert ds.get_batch([5, 0, 4])["b"] == [
            index_bytes(5, 9001),
            index_bytes(0, 10),
            index_bytes(4, 9000),
        ]


def test_blocks_are_raw_when_compression_does_not_pay(tmp_path):
    schema = {"i": "int32", "b": "bytes"}
    with fastload.Writer(tmp_path / "ds", schema, block_size=1000) as w:
        for i in range(40):  # 10 blocks of random bytes, then 10 blocks of repetitive ones
            w.write({"i": i, "b": index_bytes(i, 480) if i < 20 else bytes([i]) * 480})
    with fastload.Dataset(tmp_path / "ds") as ds:
        r = ds.shard_reader(0)
        for rec_i in range(40):
            codec = int(r.blocks["codec"][r.index.entries()["block"][rec_i]])
            assert codec == (CODEC_NONE if rec_i < 20 else CODEC_ZSTD), rec_i
        raw = r.blocks[r.blocks["codec"] == CODEC_NONE]
        assert (raw["stored_size"] == raw["raw_size"]).all()
        packed = r.blocks[r.blocks["codec"] == CODEC_ZSTD]
        assert (packed["stored_size"] * 5 < packed["raw_size"]).all()
        assert [rec["i"] for rec in ds] == list(range(40))


def test_shard_layout_matches_the_documented_format(tmp_path):
    path = tmp_path / "ds"
    with fastload.Writer(path, {"i": "int64", "b": "bytes"}, block_size=200, shard_size=1500) as w:
        for i in range(60):
            random = i % 20 < 10
            w.write({"i": i, "b": index_bytes(i, 60 + i % 3) if random else b"ab" * (i % 40)})
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "fastload" and manifest["version"] == 3
    assert manifest["checksum"] == manifest_checksum(manifest)
    assert manifest["schema"] == [{"name": "i", "type": "int64"}, {"name": "b", "type": "bytes"}]
    assert manifest["records"] == 60 == sum(s["records"] for s in manifest["shards"])
    assert manifest["bytes"] == sum(s["bytes"] for s in manifest["shards"])
    assert manifest["options"] == {
        "compression": "auto",
        "level": 3,
        "block_size": 200,
        "shard_size": 1500,
    }
    assert [s["path"] for s in manifest["shards"]] == [
        f"shard-{k:05d}.fls" for k in range(len(manifest["shards"]))
    ]
    i = 0
    seen_codecs = set()
    for entry in manifest["shards"]:
        data = (path / entry["path"]).read_bytes()
        p = parse_shard(data)
        t = p["trailer"]
        assert p["magic"] == MAGIC == t["magic"] and p["version"] == 3 == t["version"]
        assert p["flags"] == 0 == t["flags"] and p["reserved"] == b"\0" * 8
        assert p["schema_hash"] == schema_hash({"i": "int64", "b": "bytes"}) != 0
        assert entry["bytes"] == len(data)
        assert entry["blocks"] == t["n_blocks"] == len(p["blocks"])
        assert entry["records"] == t["n_records"] == len(p["records"])
        index = data[t["index_offset"] : len(data) - 56]
        assert len(index) == t["index_size"] == 48 * t["n_blocks"] + 16 * t["n_records"]
        assert t["index_hash"] == hash64(index) and entry["hash"] == f"xxh64:{hash64(index):016x}"
        assert entry["raw_bytes"] == sum(b["raw_size"] for b in p["blocks"])
        pos, first = 32, 0
        for k, (b, stored) in enumerate(zip(p["blocks"], p["stored"])):
            assert b["offset"] == pos and b["first_record"] == first and b["pad"] == b"\0" * 3
            assert b["checksum"] == hash64(stored)
            seen_codecs.add(b["codec"])
            if b["codec"] == CODEC_ZSTD:
                params = zstandard.get_frame_parameters(stored)
                assert params.content_size == b["raw_size"] and params.has_checksum
            else:
                assert b["codec"] == CODEC_NONE and b["stored_size"] == b["raw_size"]
            raw = raw_block(b, stored)
            assert len(raw) == b["raw_size"]
            recs = p["records"][first : first + b["n_records"]]
            end = 0
            for r in recs:
                assert r["block"] == k and r["offset"] % 8 == 0 and r["offset"] >= end
                assert raw[end : r["offset"]] == b"\0" * (r["offset"] - end)  # zero padding
                rec = raw[r["offset"] : r["offset"] + r["length"]]
                assert r["checksum"] == hash64(rec) & 0xFFFFFFFF
                assert int.from_bytes(rec[:8], "little") == i  # field i is first (8-aligned)
                end = r["offset"] + r["length"]
                i += 1
            assert end == len(raw)  # a block ends with its last record
            pos += b["stored_size"]
            first += b["n_records"]
        assert t["index_offset"] == pos
    assert i == 60 and seen_codecs == {CODEC_NONE, CODEC_ZSTD}
