"""`fastload verify --deep` (docs/reliability.md A24): records whose checksums are right but that
can never be read -- a variable-size field ending past its record, an array dimension of 2^62,
an image claiming 2^32-1 pixels a side, an image whose header disagrees with its stored size --
are reported by the deep check, naming shard and record, and reading them raises a
CorruptRecordError naming the same."""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zstandard

import fastload
from fastload import CorruptRecordError
from fastload.cli import main
from fastload.format.record import RecordLayout
from fastload.verify import verify_dataset

from .formattools import CODEC_ZSTD, parse_shard, replace_shard, reseal
from .make_golden import PNG_3X2, WEBP_3X2

SCHEMA = {"i": "int32", "img": "image", "grid": "float32[?,2]", "s": "str"}
LAYOUT = RecordLayout(fastload.Schema(SCHEMA))
N = 6


def record(i: int) -> dict:
    return {
        "i": i,
        "img": PNG_3X2 if i % 2 else WEBP_3X2,
        "grid": np.arange(2 * i, dtype=np.float32).reshape(i, 2),
        "s": "rec" * i,
    }


def offset_of(name: str) -> int:
    return LAYOUT.header_dtype.fields[name][1]


def var_start(rec: bytes, k: int) -> int:
    """Where variable-size field ``k`` (in var_fields order) starts within the record."""
    if k == 0:
        return LAYOUT.header_size
    return LAYOUT.header_size + struct.unpack_from("<I", rec, LAYOUT.fixed_size + 4 * (k - 1))[0]


# var_fields are img, grid, s: their ends follow the fixed part
def set_end(k: int, value: int) -> Callable[[bytearray], None]:
    return lambda rec: struct.pack_into("<I", rec, LAYOUT.fixed_size + 4 * k, value)


def set_image_size(height: int, width: int) -> Callable[[bytearray], None]:
    return lambda rec: struct.pack_into("<II", rec, offset_of("img"), height, width)


def set_dim(dim: int, value: int) -> Callable[[bytearray], None]:
    return lambda rec: struct.pack_into("<Q", rec, var_start(bytes(rec), 1) + 8 * dim, value)


def set_image_format(fmt: int) -> Callable[[bytearray], None]:
    return lambda rec: struct.pack_into("<B", rec, offset_of("img") + 8, fmt)


def damage_image_header(rec: bytearray) -> None:
    at = var_start(bytes(rec), 0)
    assert bytes(rec[at : at + 4]) == b"RIFF"  # record 2 holds the WebP
    rec[at : at + 4] = b"RIFX"


CASES = {  # record 2's damage -> what the error says
    "var end past the record": (set_end(2, 10**6), "is malformed|can never be read"),
    "var ends out of order": (set_end(0, 10**6), "is malformed|can never be read"),
    "dimension 2^62": (set_dim(0, 2**62), r"shape \(4611686018427387904, 2\)"),
    "dimension 2^62 of an empty array": (set_dim(1, 2**62), r"is not a float32\[\?,2\]"),
    "image of 2^32-1 pixels a side": (
        set_image_size(2**32 - 1, 2**32 - 1),
        "cannot be 4294967295 x 4294967295 pixels",
    ),
    "unknown image format": (set_image_format(9), "unknown image format id 9"),
}
DEEP_ONLY = {  # readable as bytes, but the image itself cannot be what the record says
    "image size unlike its header": (set_image_size(3, 2), "stored as a webp image of 3 x 2"),
    "image bytes not an image": (damage_image_header, "not a JPEG, PNG or WebP image"),
}


def shard_file(root: Path) -> Path:
    return root / json.loads((root / "manifest.json").read_text())["shards"][0]["path"]


def forge(root: Path, r: int, edit: Callable[[bytearray], None]) -> None:
    """Edit record ``r`` of the one-shard dataset at ``root`` in place (same length), with
    every checksum and the manifest recomputed: only the record's structure is wrong."""
    p = parse_shard(shard_file(root).read_bytes())
    raws = [
        zstandard.ZstdDecompressor().decompress(s) if b["codec"] == CODEC_ZSTD else bytes(s)
        for b, s in zip(p["blocks"], p["stored"], strict=True)
    ]
    entry = p["records"][r]
    raw = bytearray(raws[entry["block"]])
    rec = bytearray(raw[entry["offset"] : entry["offset"] + entry["length"]])
    edit(rec)
    assert len(rec) == entry["length"]
    raw[entry["offset"] : entry["offset"] + entry["length"]] = rec
    raws[entry["block"]] = bytes(raw)
    replace_shard(root, 0, reseal({**p, "raw": raws}))


@pytest.fixture(params=["none", "zstd"])
def dataset(request, tmp_path) -> Path:
    root = tmp_path / "ds"
    with fastload.Writer(root, SCHEMA, compression=request.param, block_size=300) as w:
        for i in range(N):
            w.write(record(i))
    return root


def deep_report(root: Path, deep: bool = True):
    return verify_dataset(str(root), deep=deep)


def cli_verify(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["verify", "--no-progress", *args])
    return rc, out.getvalue()


def test_a_sound_dataset_passes_the_deep_check(dataset):
    report = deep_report(dataset)
    assert report.ok and report.deep and report.records == N
    rc, out = cli_verify("--deep", str(dataset))
    assert rc == 0 and "every checksum matches and every record decodes" in out


@pytest.mark.parametrize("case", sorted(CASES))
def test_unreadable_records_are_reported_by_deep_verify_and_raise_on_read(dataset, case):
    edit, match = CASES[case]
    forge(dataset, 2, edit)
    shard = str(shard_file(dataset))
    assert deep_report(dataset, deep=False).ok  # every checksum matches
    report = deep_report(dataset)
    assert len(report.problems) == 1, report.problems
    assert report.problems[0].startswith(f"{shard}: record 2 (block ")
    assert "can never be read" in report.problems[0]
    rc, out = cli_verify("--deep", str(dataset))
    assert rc == 1 and out.startswith(f"CORRUPT {shard}: record 2 ")
    with fastload.Dataset(dataset) as ds:
        for read in (lambda: ds[2], lambda: ds.get_batch([1, 2, 3])):
            with pytest.raises(CorruptRecordError, match=match) as e:
                read()
            assert str(e.value).startswith(f"{shard}: record 2 (block ")
        assert ds[3]["s"] == "rec" * 3  # its neighbours read


@pytest.mark.parametrize("case", sorted(DEEP_ONLY))
def test_images_unlike_their_headers_are_reported_by_deep_verify(dataset, case):
    """Reading returns the encoded bytes undecoded, so only the deep check parses them."""
    edit, match = DEEP_ONLY[case]
    forge(dataset, 2, edit)
    report = deep_report(dataset)
    assert len(report.problems) == 1 and "record 2 (block " in report.problems[0]
    assert re.search(match, report.problems[0]), report.problems


def test_deep_verify_reports_every_bad_record_and_the_checksum_failures(dataset):
    forge(dataset, 1, set_dim(0, 2**62))
    forge(dataset, 4, set_image_size(70000, 5))  # JPEG/WebP limits: PNG could, WebP cannot
    shard = shard_file(dataset)
    data = bytearray(shard.read_bytes())
    p = parse_shard(bytes(data))
    assert p["records"][5]["block"] != p["records"][4]["block"]
    b = p["blocks"][p["records"][5]["block"]]
    data[b["offset"] + b["stored_size"] - 1] ^= 0x10  # record 5's block fails its checksum
    shard.unlink()
    shard.write_bytes(bytes(data))
    report = deep_report(dataset)
    said = "\n".join(report.problems)
    assert len(report.problems) == 3, report.problems
    assert f"{shard}: record 1 " in said and "shape (4611686018427387904, 2)" in said
    assert f"{shard}: record 4 " in said and "webp image cannot be 70000 x 5 pixels" in said
    assert re.search(r"record 5 .*failed its checksum|records 5\.\.5\) failed its checksum", said)


def test_writer_refuses_images_no_reader_could_read(tmp_path):
    huge_png = bytearray(PNG_3X2)
    struct.pack_into(">II", huge_png, 16, 2**31, 2)  # IHDR width past PNG's limit
    with pytest.raises(fastload.SchemaError, match="cannot be 2 x 2147483648 pixels"):
        with fastload.Writer(tmp_path / "ds", {"img": "image"}) as w:
            w.write({"img": bytes(huge_png)})
    assert not (tmp_path / "ds" / "manifest.json").exists()
