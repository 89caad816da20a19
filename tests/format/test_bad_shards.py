"""Bad input (docs/reliability.md A1-A18): every fault gives a typed fastload error naming the file
(and the block, record and offset where they apply); never wrong data, never another exception."""

from __future__ import annotations

import json
import re
import shutil
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard

import fastload
from fastload import (
    CorruptRecordError,
    FastloadError,
    IncompleteDatasetError,
    ManifestError,
    MissingShardError,
    ShardChecksumError,
    ShardFormatError,
    _core,
)
from fastload.format.manifest import ShardInfo
from fastload.format.record import RecordLayout
from fastload.format.shard_reader import ShardReader
from fastload.verify import verify_dataset

from .formattools import (
    CHECKSUM_GROUPS,
    CODEC_NONE,
    CODEC_ZSTD,
    FIXED_SIZE,
    TRAILER,
    MemSource,
    all_files,
    assert_record,
    build_shard,
    hash64,
    index_bytes,
    parse_shard,
    replace_shard,
    reseal,
    write_manifest,
)

SCHEMA = {"i": "int32", "b": "bytes", "s": "str"}
N = 14
NAME = "mem://ds/shard-00000.fls"


def small_record(i: int) -> dict:
    """Random (raw-block) and repetitive (zstd-block) payloads, so both codecs appear."""
    return {
        "i": i,
        "b": index_bytes(i, 24) if i % 6 < 3 else bytes([65 + i]) * 40,
        "s": "é" * (i % 4),
    }


ORIGINALS = [small_record(i) for i in range(N)]


@pytest.fixture(scope="module")
def small_ds_path(tmp_path_factory) -> Path:
    """A one-shard dataset of N records in 9 small blocks, raw and zstd."""
    path = tmp_path_factory.mktemp("small") / "ds"
    with fastload.Writer(path, SCHEMA, block_size=100, compression="zstd") as w:
        for rec in ORIGINALS:
            w.write(rec)
    return path


@pytest.fixture
def ds_copy(small_ds_path, tmp_path) -> Path:
    """A private copy of the small dataset, to damage."""
    return Path(shutil.copytree(small_ds_path, tmp_path / "ds"))


@pytest.fixture(scope="module")
def small(small_ds_path):
    """(dataset, shard bytes, manifest entry, parsed shard) of the small dataset."""
    ds = fastload.Dataset(small_ds_path)
    info = ds.shards[0]
    data = (small_ds_path / info.path).read_bytes()
    p = parse_shard(data)
    assert {b["codec"] for b in p["blocks"]} == {CODEC_NONE, CODEC_ZSTD} and len(p["blocks"]) > 4
    yield ds, data, info, p
    ds.close()


# The same faults in a shard of the fixed layout (fixed-size records: a checksum per record,
# places computed from the block table): 40-byte records, three to a block of 130 bytes.
FIXED_SCHEMA = {"i": "int32", "v": "uint8[32]", "x": "float32"}


def fixed_record(i: int) -> dict:
    v = index_bytes(i, 32) if i % 6 < 3 else bytes([65 + i]) * 32  # raw and zstd blocks
    return {"i": i, "v": np.frombuffer(v, np.uint8), "x": i / 4}


FIXED_ORIGINALS = [fixed_record(i) for i in range(N)]

# ... and in one whose small records share checksums: 16-byte records, a checksum per 4
# records of a block, six to a block of 100 bytes (groups of 4 and of 2).
GROUPED_SCHEMA = {"i": "int32", "g": "uint8[8]", "x": "float32"}


def grouped_record(i: int) -> dict:
    g = index_bytes(i, 8) if i % 12 < 6 else bytes([65 + i]) * 8  # raw and zstd blocks
    return {"i": i, "g": np.frombuffer(g, np.uint8), "x": i / 4}


GROUPED_ORIGINALS = [grouped_record(i) for i in range(N)]


def one_shard(tmp_path_factory, name: str, schema: dict, originals: list, block_size: int):
    """(dataset, shard bytes, manifest entry, parsed shard) of a one-shard dataset of
    ``originals``, zstd where it pays."""
    path = tmp_path_factory.mktemp(name) / "ds"
    with fastload.Writer(path, schema, block_size=block_size, compression="zstd") as w:
        for rec in originals:
            w.write(rec)
    ds = fastload.Dataset(path)
    info = ds.shards[0]
    return ds, (path / info.path).read_bytes(), info


@pytest.fixture(scope="module")
def fixed_small(tmp_path_factory):
    """(dataset, shard bytes, manifest entry, parsed shard) of a one-shard dataset of N
    fixed-size records in 5 blocks, raw and zstd."""
    ds, data, info = one_shard(tmp_path_factory, "fixed", FIXED_SCHEMA, FIXED_ORIGINALS, 130)
    p = parse_shard(data)
    assert p["flags"] == FIXED_SIZE and p["record_size"] == 40
    assert {b["codec"] for b in p["blocks"]} == {CODEC_NONE, CODEC_ZSTD} and len(p["blocks"]) == 5
    yield ds, data, info, p
    ds.close()


@pytest.fixture(scope="module")
def grouped_small(tmp_path_factory):
    """(dataset, shard bytes, manifest entry, parsed shard) of a one-shard dataset of N
    16-byte records in 3 blocks, raw and zstd, a checksum per group of 4 records."""
    ds, data, info = one_shard(tmp_path_factory, "grouped", GROUPED_SCHEMA, GROUPED_ORIGINALS, 100)
    p = parse_shard(data)
    assert p["flags"] == FIXED_SIZE | CHECKSUM_GROUPS and p["group"] == 4
    assert [b["n_records"] for b in p["blocks"]] == [6, 6, 2]
    assert {b["codec"] for b in p["blocks"]} == {CODEC_NONE, CODEC_ZSTD}
    yield ds, data, info, p
    ds.close()


@pytest.fixture(params=["entries", "fixed", "grouped"])
def any_small(request):
    """``small``, ``fixed_small`` or ``grouped_small``: the checks every layout gets."""
    name = {"entries": "small", "fixed": "fixed_small", "grouped": "grouped_small"}
    return request.getfixturevalue(name[request.param])


def originals_of(ds: fastload.Dataset) -> list[dict]:
    if "g" in ds.schema:
        return GROUPED_ORIGINALS
    return FIXED_ORIGINALS if "v" in ds.schema else ORIGINALS


def shard_path(root: Path, s: int = 0) -> Path:
    return root / json.loads((root / "manifest.json").read_text())["shards"][s]["path"]


def read_all(ds: fastload.Dataset) -> None:
    for i in range(len(ds)):
        ds[i]


def with_reader(ds: fastload.Dataset, data: bytes, info: ShardInfo | None, mapped: bool = True):
    """Point shard 0 of ``ds`` at in-memory ``data`` (opening it: may raise)."""
    ds.close()
    ds._readers[0] = ShardReader(
        MemSource(data, NAME, mapped), expected=info, layout=RecordLayout(ds.schema)
    )
    return ds


def read_through(ds: fastload.Dataset, data: bytes, info, mapped: bool):
    """Open ``data`` as shard 0 and read every record with ds[i] and get_batch.

    Returns ``(stage, error)``: ``("ok", None)`` when every read gave exactly the original
    records, else the stage that raised ("open" or "read") and the FastloadError. Any other
    exception propagates (and fails the test).
    """
    try:
        with_reader(ds, data, info, mapped)
    except FastloadError as e:
        return "open", e
    originals = originals_of(ds)
    try:
        for i in range(N):
            assert_record(ds[i], originals[i], i)
        order = [N - 1, 0, 5, 5, -2, 3, 9, 1]
        batch = ds.get_batch(order)
        for k, want in originals[0].items():
            if isinstance(want, np.ndarray) or k == "x":
                got = np.asarray(batch[k])
                assert np.array_equal(got, np.stack([originals[i][k] for i in order])), k
            else:
                got = [np.asarray(v).item() if k == "i" else v for v in batch[k]]
                assert got == [originals[i][k] for i in order], k
    except FastloadError as e:
        return "read", e
    return "ok", None


# --------------------------------------------------------------------------- A1-A5


def test_a1_zero_byte_shard(ds_copy):
    shard_path(ds_copy).write_bytes(b"")
    with fastload.Dataset(ds_copy) as ds:
        with pytest.raises(ShardFormatError, match="file is 0 bytes") as e:
            ds[0]
    assert str(shard_path(ds_copy)) in str(e.value)
    with pytest.raises(ShardFormatError, match=f"^{NAME}: file is 0 bytes"):
        ShardReader(MemSource(b"", NAME))


@pytest.mark.parametrize("size", [1, 8, 32, 87])
def test_a2_shard_shorter_than_header_and_trailer(small, size):
    _, data, info, _ = small
    for expected in (info, None):
        with pytest.raises(
            ShardFormatError,
            match=f"^{NAME}: file is {size} bytes, smaller "
            r"than the minimum shard size \(88 bytes",
        ):
            ShardReader(MemSource(data[:size], NAME), expected=expected)


def test_a3_html_error_page_saved_as_a_shard(ds_copy):
    page = (
        b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>"
        + b"<h1>Not Found</h1>" * 20
        + b"</body></html>"
    )
    shard_path(ds_copy).write_bytes(page)
    with fastload.Dataset(ds_copy) as ds:
        with pytest.raises(
            ShardFormatError,
            match=r"not a fastload shard: it does not start with the magic bytes b'FASTLOAD'",
        ) as e:
            ds.get_batch([0])
    assert str(shard_path(ds_copy)) in str(e.value)


@pytest.mark.parametrize("where", ["header", "trailer"])
@pytest.mark.parametrize("version", [0, 4, 2**32 - 1])
def test_a4_unknown_format_version(small, where, version):
    _, data, info, _ = small
    bad = bytearray(data)
    offset = 8 if where == "header" else len(data) - 56 + 40
    bad[offset : offset + 4] = struct.pack("<I", version)
    for expected in (info, None):
        with pytest.raises(ShardFormatError) as e:
            ShardReader(MemSource(bytes(bad), NAME), expected=expected)
        msg = str(e.value)
        assert msg.startswith(NAME) and f"format version {version} in the {where}" in msg
        assert "supports [1, 2, 3]" in msg and "upgrade fastload" in msg


@pytest.mark.parametrize("where", ["header", "trailer"])
def test_header_and_trailer_versions_must_agree(small, where):
    """Both are supported versions, but a shard is one version: a mix is damage."""
    _, data, info, _ = small
    bad = bytearray(data)
    offset = 8 if where == "header" else len(data) - 56 + 40
    bad[offset : offset + 4] = struct.pack("<I", 1)
    if where == "header":
        bad[16:24] = bytes(8)  # a valid version-1 header: no schema fingerprint
    with pytest.raises(ShardFormatError, match=f"^{NAME}: the header says format version"):
        ShardReader(MemSource(bytes(bad), NAME), expected=info)


def test_a4_version_check_is_not_an_assertion(small):
    """Also with python -O: the check must be a real error, not an assert."""
    _, data, _, _ = small
    bad = bytearray(data)
    bad[8] = 9
    with pytest.raises(FastloadError):
        ShardReader(MemSource(bytes(bad), NAME))


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("index_offset", 10**9, "index claims .* bytes at offset 1000000000, but the file has"),
        ("index_offset", 2**64 - 1, "index claims"),
        ("index_offset", 0, "index claims"),
        ("index_size", 10**9, r"index claims 1000000000 bytes .*the file has \d+ bytes"),
        ("index_size", 2**63, "index claims"),
        ("n_blocks", 2**40, "does not hold"),
        ("n_records", 2**64 - 1, "does not hold"),
    ],
)
def test_a5_trailer_pointing_past_eof(small, field, value, match):
    _, data, _, p = small
    t = dict(p["trailer"])
    t[field] = value
    bad = data[: len(data) - 56] + TRAILER.pack(*t.values())
    with pytest.raises(ShardFormatError, match=match) as e:
        ShardReader(MemSource(bad, NAME))
    assert str(e.value).startswith(NAME)


# --------------------------------------------------------------------------- A6: the index


class SpySource(MemSource):
    """Records every read, to show what was (not) read before an error."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, mapped=False, **kw)
        self.reads: list[tuple[int, int]] = []

    def read(self, offset, length):
        self.reads.append((offset, length))
        return super().read(offset, length)


def test_a6_flipped_index_byte_fails_the_index_checksum_before_any_record_is_read(any_small):
    _, data, info, p = any_small
    start = p["trailer"]["index_offset"]
    for pos in range(start, len(data) - 56, 7):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        src = SpySource(bytes(bad), NAME)
        with pytest.raises(
            ShardFormatError,
            match=rf"^{NAME}: index \(bytes {start}\.\.\d+\) "
            "failed its checksum",
        ):
            ShardReader(src, expected=None)
        assert all(o == 0 or o >= start for o, _ in src.reads), src.reads  # no block was read


# --------------------------------------------------------------------------- every byte


def byte_classes(data: bytes, p: dict) -> dict[int, tuple]:
    """What each byte of the shard is: ("header", ...), ("block", k, record or None), ..."""
    out: dict[int, tuple] = {}
    for pos in range(32):
        # flags and reserved bytes; 16..24 is the schema's fingerprint
        out[pos] = ("header-flags",) if pos >= 12 and not 16 <= pos < 24 else ("header",)
    for k, b in enumerate(p["blocks"]):
        for pos in range(b["offset"], b["offset"] + b["stored_size"]):
            out[pos] = ("block", k, None)
        if b["codec"] == CODEC_NONE:
            for r in range(b["first_record"], b["first_record"] + b["n_records"]):
                rec = p["records"][r]
                for pos in range(rec["offset"], rec["offset"] + rec["length"]):
                    out[b["offset"] + pos] = ("block", k, r)
    for pos in range(p["trailer"]["index_offset"], len(data)):
        out[pos] = ("index",)
    t0 = len(data) - 56
    for pos in range(t0, len(data)):
        out[pos] = ("trailer-flags",) if t0 + 44 <= pos < t0 + 48 else ("trailer",)
    assert len(out) == len(data)
    return out


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "ranged"])
def test_every_byte_flip_is_detected_or_harmless(any_small, mapped):
    """Flip each byte of a shard (every bit, and all bits); reading everything must either give
    exactly the original records or raise a FastloadError that names the shard and the damaged
    block and record. Only the padding between records may be flipped without an error on read --
    and `fastload verify` still reports it."""
    ds, data, info, p = any_small
    classes = byte_classes(data, p)
    undetected = []
    masks = [1 << bit for bit in range(8)] + [0xFF] if mapped else [0xFF]
    for pos in range(len(data)):
        for mask in masks if mapped else [1 << (pos % 8)] + masks:
            bad = bytearray(data)
            bad[pos] ^= mask
            try:
                stage, err = read_through(ds, bytes(bad), info, mapped)
            except Exception as e:
                pytest.fail(f"flip {mask:#x} at byte {pos} {classes[pos]}: {type(e).__name__}: {e}")
            cls = classes[pos]
            if stage == "ok":
                undetected.append((pos, cls))
                continue
            msg = str(err)
            assert msg.startswith(NAME), (pos, msg)
            if cls[0] == "block":
                assert stage == "read", (pos, cls, msg)
                k, r = cls[1], cls[2]
                blk = p["blocks"][k]
                assert isinstance(err, CorruptRecordError), (pos, msg)
                if r is None:  # zstd block: the block and the records it holds
                    first, last = blk["first_record"], blk["first_record"] + blk["n_records"] - 1
                    assert f"block {k} (byte offset {blk['offset']}" in msg, msg
                    assert f"records {first}..{last}" in msg, msg
                elif p["group"] == 1:  # raw block: the record itself, its byte offset in the file
                    offset = blk["offset"] + p["records"][r]["offset"]
                    assert f"record {r} (block {k}, byte offset {offset})" in msg, msg
                else:  # the first record read of the group whose one checksum failed
                    first = r - (r - blk["first_record"]) % p["group"]
                    last = min(first + p["group"], blk["first_record"] + blk["n_records"]) - 1
                    offset = blk["offset"] + p["records"][first]["offset"]
                    assert f"record {first} (block {k}, byte offset {offset}" in msg, msg
                    assert f"one checksum with records {first}..{last})" in msg, msg
            else:
                assert stage == "open", (pos, cls, msg)
    for pos, cls in undetected:
        assert cls == ("block", cls[1], None) and p["blocks"][cls[1]]["codec"] == CODEC_NONE, (
            pos,
            cls,
        )
        if cls[0] == "block":  # padding between records: verify's block checksum sees it
            bad = bytearray(data)
            bad[pos] ^= 1
            problems = [str(e) for e in ShardReader(MemSource(bytes(bad), NAME)).problems()]
            assert len(problems) == 1 and f"block {cls[1]} " in problems[0], problems
    # the undetected bytes are few: flags and reserved bytes, and padding (< 8 per record)
    assert len({pos for pos, _ in undetected}) <= 20 + 4 + 7 * N


def test_every_index_and_trailer_flip_is_detected_without_a_manifest(any_small):
    ds, data, _, p = any_small
    for pos in range(p["trailer"]["index_offset"], len(data)):
        if len(data) - 12 <= pos < len(data) - 8:
            continue  # trailer flags
        bad = bytearray(data)
        bad[pos] ^= 0x04
        stage, err = read_through(ds, bytes(bad), None, True)
        assert stage == "open" and str(err).startswith(NAME), (pos, stage)


def test_every_truncation_and_extension_is_detected(any_small):
    ds, data, info, _ = any_small
    for cut in range(len(data)):
        for expected in (info, None):
            with pytest.raises(ShardFormatError) as e:
                ShardReader(MemSource(data[:cut], NAME), expected=expected)
            assert str(e.value).startswith(NAME)
    for extra in (b"\0", b"FASTLOAD", data[-56:], data):
        for expected in (info, None):
            stage, err = read_through(ds, data + extra, expected, True)
            assert stage == "open" and isinstance(err, ShardFormatError)


def test_truncated_shard_in_a_dataset_names_sizes(ds_copy):
    path = shard_path(ds_copy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with fastload.Dataset(ds_copy) as ds:
        with pytest.raises(
            ShardFormatError, match=f"is {len(data) // 2} bytes but the manifest says {len(data)}"
        ) as e:
            ds[3]
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------- forged shards


def forged(p: dict, edit) -> bytes:
    """``p`` with ``edit(blocks, records)`` applied and every checksum recomputed."""
    q = {**p, "blocks": [dict(b) for b in p["blocks"]], "records": [dict(r) for r in p["records"]]}
    edit(q["blocks"], q["records"])
    return reseal(q)


def test_resealed_copy_is_identical(any_small):
    """The forging helper reproduces the writer's bytes exactly (so forged shards differ only
    where a test edits them)."""
    _, data, _, p = any_small
    assert reseal(p) == data


@pytest.mark.parametrize("length", [2**32 - 1, 2**31, 10**6])
def test_a7_a11_huge_record_length_is_rejected_at_open_without_allocating(small, length):
    _, _, _, p = small

    def edit(blocks, records):
        records[5]["length"] = length

    bad = forged(p, edit)
    tracemalloc.start()
    try:
        with pytest.raises(
            ShardFormatError,
            match=rf"^{NAME}: index is inconsistent: record 5 "
            "ends past the end of block",
        ):
            ShardReader(MemSource(bad, NAME))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda b, r: b[2].update(raw_size=2**40), r"block 2 claims 1099511627776 raw bytes"),
        (lambda b, r: b[2].update(raw_size=2**64 - 1), "block 2 claims"),
        (lambda b, r: b[1].update(codec=9), "block 1 has unknown codec 9"),
        (lambda b, r: b[0].update(raw_size=b[0]["raw_size"] + 1), "raw block 0 has stored size"),
        (lambda b, r: b[3].update(first_record=0), "block 3 says its first record is 0"),
        (lambda b, r: b[3].update(n_records=b[3]["n_records"] + 1), "blocks hold 15 records"),
        (lambda b, r: r[4].update(block=0), "record 4 points to block 0"),
        (lambda b, r: r[4].update(offset=2**32 - 1), "record 4 ends past the end of block"),
    ],
)
def test_inconsistent_index_is_rejected_at_open(small, edit, match):
    _, _, _, p = small
    with pytest.raises(ShardFormatError, match=rf"^{NAME}: index is inconsistent: .*{match}"):
        ShardReader(MemSource(forged(p, edit), NAME))


@pytest.mark.parametrize("where", ["outside", "overlap", "huge"])
def test_blocks_outside_the_data_area_are_rejected(small, where):
    _, _, _, p = small
    blocks = [dict(b) for b in p["blocks"]]
    if where == "outside":
        blocks[4]["offset"] = 10**7
    elif where == "overlap":
        blocks[4]["offset"] -= 5
    else:
        blocks[4]["stored_size"] = 2**63
    bad = build_shard(p["stored"], blocks, p["records"], fix_offsets=False)
    with pytest.raises(ShardFormatError, match="block 4 (lies outside|overlaps)"):
        ShardReader(MemSource(bad, NAME))


def forged_fixed(p: dict, edit, **kw) -> bytes:
    """The fixed-layout shard ``p`` with ``edit(blocks, parsed)`` applied and every checksum
    recomputed (``parsed["record_size"]`` is the table's record size)."""
    q = {**p, "blocks": [dict(b) for b in p["blocks"]], "records": [dict(r) for r in p["records"]]}
    edit(q["blocks"], q)
    return reseal(q, **kw)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda b, q: b[1].update(n_records=2), "blocks hold 13 records, index has 14"),
        (
            lambda b, q: (b[1].update(n_records=2), b[4].update(n_records=3)),
            "block 1 holds 2 records; a shard of fixed-size records has 3 in every block but "
            "the last, and 1 to 3 in that",
        ),
        (
            lambda b, q: (b[3].update(n_records=1), b[4].update(n_records=4)),
            "block 3 holds 1 records",
        ),
        (lambda b, q: b[0].update(n_records=0), "blocks hold 11 records"),
        (lambda b, q: b[2].update(first_record=7), "block 2 says its first record is 7"),
        (
            lambda b, q: b[1].update(raw_size=b[1]["raw_size"] + 8),
            r"block 1 has 128 raw bytes, but 3 records of 40 bytes take 120",
        ),
        (lambda b, q: q.update(record_size=41), "block 0 has 120 raw bytes, but 3 records of 41"),
        (lambda b, q: q.update(record_size=2**40), r"records of 1099511627776 bytes \(limit"),
        (lambda b, q: q.update(record_size=2**64 - 1), "records of 18446744073709551615 bytes"),
    ],
)
def test_inconsistent_fixed_index_is_rejected_at_open(fixed_small, edit, match):
    """A shard of the fixed layout (checksums recomputed) whose blocks do not hold its records
    as the layout lays them out is refused at open, naming the block; in the core too."""
    _, _, _, p = fixed_small
    bad = forged_fixed(p, edit)
    with pytest.raises(ShardFormatError, match=rf"^{NAME}: index is inconsistent: .*{match}"):
        ShardReader(MemSource(bad, NAME))


def test_the_core_refuses_a_fixed_index_the_reader_would(fixed_small):
    """The compiled core reads the same tables in place and checks them its own way: a shard
    whose blocks do not hold its records is refused when it is added, not read wrong."""
    _, data, _, p = fixed_small
    bad = parse_shard(
        forged_fixed(p, lambda b, q: (b[1].update(n_records=2), b[4].update(n_records=3)))
    )
    index = data[p["trailer"]["index_offset"] : -56]  # the original's, then the forged one's
    bad_data = reseal(bad)
    bad_index = bad_data[bad["trailer"]["index_offset"] : -56]
    for idx, ok in ((index, True), (bad_index, False)):
        m = _core.RecordMap(np.array([0, N], np.int64), np.array([0, 5], np.int64))
        blocks, table = idx[: 5 * 48], idx[5 * 48 + 8 :]
        if ok:
            m.add(0, blocks, table, 5, N, 32)
            assert m.block_numbers(np.arange(N, dtype=np.int64)).tolist() == [
                r // 3 for r in range(N)
            ]
        else:
            with pytest.raises(ValueError, match="block 1 holds records 3 \\+ 2"):
                m.add(0, blocks, table, 5, N, 32)


@pytest.mark.parametrize(
    "header, trailer, version, match",
    [
        (FIXED_SIZE, 0, 2, "the header has flags 0x1 and the trailer 0x0"),
        (0, FIXED_SIZE, 2, "the header has flags 0x0 and the trailer 0x1"),
        (FIXED_SIZE | 4, FIXED_SIZE | 4, 2, "the header has flags 0x5 and reserved bytes"),
        (1 << 31, 1 << 31, 2, "the header has flags 0x80000000 and reserved bytes"),
        (FIXED_SIZE, FIXED_SIZE, 1, "the header has flags 0x1 and reserved bytes"),
    ],
)
def test_flags_the_reader_cannot_honour_are_refused(fixed_small, header, trailer, version, match):
    """The layout flag is in the header and the trailer: they must agree, a bit this reader
    does not know is refused, and version 1 had no flags."""
    _, data, info, p = fixed_small
    good = reseal(p, version=version, schema_hash=p["schema_hash"] if version == 2 else 0)
    bad = bytearray(good)
    bad[12:16] = struct.pack("<I", header)
    bad[-12:-8] = struct.pack("<I", trailer)
    for expected in (info, None):
        with pytest.raises(ShardFormatError, match=f"^{NAME}: {re.escape(match)}"):
            ShardReader(MemSource(bytes(bad), NAME), expected=expected)


@pytest.mark.parametrize("layout", ["entries", "fixed"])
def test_a_layout_flag_that_does_not_match_the_index_is_refused(small, fixed_small, layout):
    """The flag set on a shard with an entry per record, or cleared on a fixed one (in both
    header and trailer): the index is not the size the flag says, so the shard does not open,
    whatever the counts."""
    _, data, _, _ = small if layout == "entries" else fixed_small
    bad = bytearray(data)
    flags = FIXED_SIZE if layout == "entries" else 0
    bad[12:16] = bad[-12:-8] = struct.pack("<I", flags)
    with pytest.raises(ShardFormatError, match=f"^{NAME}: index is .* bytes, which does not hold"):
        ShardReader(MemSource(bytes(bad), NAME))


def test_a_fixed_shard_of_version_1_reads_with_an_entry_per_record(fixed_small, tmp_path):
    """What a version-1 writer made of fixed-size records (no flags, an entry per record)
    reads as before, record for record."""
    ds, _, info, p = fixed_small
    old = reseal(p, version=1, schema_hash=0)
    assert parse_shard(old)["flags"] == 0 and len(old) > len(reseal(p))  # 16 bytes a record
    reader = ShardReader(MemSource(old, NAME), layout=RecordLayout(ds.schema))
    assert reader.index.record_size is None
    for r in range(N):
        assert_record(
            RecordLayout(ds.schema).decode(memoryview(reader.record(r))), FIXED_ORIGINALS[r]
        )


def zstd_block_index(p: dict) -> int:
    return next(k for k, b in enumerate(p["blocks"]) if b["codec"] == CODEC_ZSTD)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bad-frame-checksum", "size-lie"])
def test_a12_corrupt_zstd_frame_behind_a_valid_block_checksum(small, damage):
    """The stored bytes match their (recomputed) block checksum, but the frame is bad: the zstd
    error is wrapped, naming shard, block and records; nothing is allocated from the lie."""
    ds, _, _, p = small
    k = zstd_block_index(p)
    stored = list(p["stored"])
    frame = stored[k]
    raw = zstandard.ZstdDecompressor().decompress(frame)
    if damage == "truncated":
        stored[k] = frame[: len(frame) - 6]
    elif damage == "garbage":
        stored[k] = frame[:6] + bytes(len(frame) - 6)
    elif damage == "bad-frame-checksum":
        stored[k] = frame[:-1] + bytes([frame[-1] ^ 1])
    else:  # a frame that declares (and holds) more bytes than the index says
        stored[k] = zstandard.ZstdCompressor(write_content_size=True).compress(raw + b"x" * 10**5)
    blocks = [dict(b) for b in p["blocks"]]
    blocks[k]["checksum"] = hash64(stored[k])
    bad = build_shard(stored, blocks, p["records"])
    first = blocks[k]["first_record"]
    for verify in (True, False):
        reader = ShardReader(MemSource(bad, NAME), verify=verify)
        with pytest.raises(CorruptRecordError) as e:
            reader.record(first)
        msg = str(e.value)
        assert msg.startswith(f"{NAME}: block {k} (byte offset") and "could not be decoded" in msg
        assert f"records {first}..{first + blocks[k]['n_records'] - 1}" in msg
        if damage == "size-lie":
            assert f"declares {len(raw) + 10**5} bytes, index says {len(raw)}" in msg
    problems = [str(x) for x in ShardReader(MemSource(bad, NAME)).problems()]
    assert any("could not be decoded" in x for x in problems)


def test_corrupt_zstd_block_with_verify_off_is_still_an_error(ds_copy, small):
    _, data, _, p = small
    k = zstd_block_index(p)
    bad = bytearray(data)
    bad[p["blocks"][k]["offset"] + p["blocks"][k]["stored_size"] // 2] ^= 0x55
    shard_path(ds_copy).write_bytes(bytes(bad))
    with fastload.Dataset(ds_copy, verify=False) as ds:
        with pytest.raises(CorruptRecordError, match=f"block {k} .*could not be decoded"):
            read_all(ds)


def test_malformed_record_behind_a_valid_checksum_names_the_record(small):
    """A record whose own field lengths are wrong (checksums recomputed) is reported as
    malformed, by ds[i] and by get_batch, without allocating from the bad lengths."""
    ds, data, info, p = small
    for field_end, value in ((0, 2**32 - 1), (0, 2**31), (1, 0)):
        raws = [
            bytes(zstandard.ZstdDecompressor().decompress(s))
            if b["codec"] == CODEC_ZSTD
            else bytes(s)
            for b, s in zip(p["blocks"], p["stored"])
        ]
        r = 6
        rec = p["records"][r]
        raw = bytearray(raws[rec["block"]])
        at = rec["offset"] + 4 + 4 * field_end  # after the int32 'i': the var ends of b and s
        raw[at : at + 4] = struct.pack("<I", value)
        raws[rec["block"]] = bytes(raw)
        bad = reseal({**p, "raw": raws})
        with_reader(ds, bad, None)
        blk = rec["block"]
        with pytest.raises(
            CorruptRecordError,
            match=rf"^{NAME}: record {r} \(block {blk}, "
            r"byte offset \d+.*\) is malformed: field",
        ):
            ds[r]
        with pytest.raises(CorruptRecordError, match=rf"^{NAME}: record {r} .*is malformed"):
            ds.get_batch([0, r, 1])
        assert_record(ds[r - 1], ORIGINALS[r - 1])  # neighbours still read


# --------------------------------------------------------------------------- A13, A15


def test_a13_shard_replaced_by_another_valid_shard(tmp_path):
    with fastload.Writer(
        tmp_path / "ds", {"i": "int64"}, compression="none", block_size=64, shard_size=300
    ) as w:
        for i in range(100):
            w.write({"i": i})
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    a, b = (tmp_path / "ds" / m["shards"][k]["path"] for k in (0, 1))
    assert m["shards"][0]["bytes"] == m["shards"][1]["bytes"]  # same size, other content
    a.write_bytes(b.read_bytes())
    with fastload.Dataset(tmp_path / "ds") as ds:
        with pytest.raises(ShardChecksumError) as e:
            ds[0]
        assert ds[len(ds) - 1]["i"] == 99  # other shards are fine
    msg = str(e.value)
    assert msg.startswith(str(a))
    assert m["shards"][0]["hash"] in msg and m["shards"][1]["hash"] in msg
    report = verify_dataset(str(tmp_path / "ds"))
    assert not report.ok and str(a) in report.problems[0]


def test_a13_replaced_by_a_shard_of_another_size(ds_copy, tmp_path):
    other = tmp_path / "other"
    with fastload.Writer(other, SCHEMA) as w:
        w.write(small_record(0))
    shard_path(ds_copy).write_bytes(shard_path(other).read_bytes())
    with fastload.Dataset(ds_copy) as ds:
        with pytest.raises(ShardFormatError, match="bytes but the manifest says"):
            ds[0]


def test_a15_verify_off_returns_corrupt_payload_without_error(ds_copy, small):
    """The documented contract: with verify=False, a flipped payload byte in a raw block is
    returned as is (no detection); with verify=True it is an error."""
    _, data, _, p = small
    r = 1  # in the first block, which is raw
    blk = p["blocks"][p["records"][r]["block"]]
    assert blk["codec"] == CODEC_NONE
    pos = blk["offset"] + p["records"][r]["offset"] + 12 + 3  # 4th byte of field b
    bad = bytearray(data)
    bad[pos] ^= 0xFF
    shard_path(ds_copy).write_bytes(bytes(bad))
    with fastload.Dataset(ds_copy, verify=False) as ds:
        got = ds[r]
        assert got["b"] != ORIGINALS[r]["b"] and len(got["b"]) == 24
        assert got["b"][3] == ORIGINALS[r]["b"][3] ^ 0xFF
        assert ds.get_batch([r])["b"] == [got["b"]]
        assert_record(ds[0], ORIGINALS[0])
    with fastload.Dataset(ds_copy) as ds:
        with pytest.raises(CorruptRecordError, match=f"record {r} .*failed its checksum"):
            ds[r]
        with pytest.raises(CorruptRecordError, match=f"record {r} .*failed its checksum"):
            ds.get_batch([0, r])


# --------------------------------------------------------------------------- manifests, A16-A18


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "manifest is empty"),
        (b"  \n", "manifest is empty"),
        (b'{"format": "fastload", ', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        pytest.param(b"[" * 100000 + b"]" * 100000, "not valid JSON", id="deeply-nested"),
        (b"[]", "not a fastload manifest"),
        (b'{"format": "parquet"}', "not a fastload manifest"),
        (b"<html>503 Service Unavailable</html>", "not valid JSON"),
    ],
)
def test_a16_unreadable_manifest_names_its_path(ds_copy, content, match):
    (ds_copy / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError, match=match) as e:
        fastload.Dataset(ds_copy)
    assert str(e.value).startswith(str(ds_copy / "manifest.json"))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.update(version=4), r"format version 4 is not supported.*supports \[1, 2, 3\]"),
        (lambda m: m.pop("version"), "format version None is not supported"),
        (lambda m: m.update(records=999), '"records" is 999 but the shards add up to 14'),
        (lambda m: m.update(schema={"i": "int32"}), "invalid schema"),
        (lambda m: m.update(schema=[{"name": "i", "type": "int33"}]), "invalid schema"),
        (lambda m: m.update(shards={}), '"shards" must be a list'),
        (lambda m: m.update(options=[]), '"options" must be an object'),
        (lambda m: m["shards"].append(7), "shard entry 1: must be an object"),
        (lambda m: m["shards"][0].update(path="../../etc/passwd"), "shard entry 0: path"),
        (lambda m: m["shards"][0].update(path="/etc/passwd"), "shard entry 0: path"),
        (lambda m: m["shards"][0].update(path="s3://bucket/x.fls"), "shard entry 0: path"),
        (lambda m: m["shards"][0].update(path="a/./b.fls"), "shard entry 0: path"),
        (lambda m: m["shards"][0].update(path=""), "shard entry 0: path"),
        (lambda m: m["shards"][0].update(records=-1), "'records' must be a non-negative"),
        (lambda m: m["shards"][0].update(bytes="12"), "'bytes' must be a non-negative"),
        (lambda m: m["shards"][0].update(blocks=True), "'blocks' must be a non-negative"),
        (lambda m: m["shards"][0].update(hash="md5:00"), "hash 'md5:00' must look like"),
    ],
)
def test_a16_invalid_manifest_content_names_its_path(ds_copy, edit, match):
    m = json.loads((ds_copy / "manifest.json").read_text())
    edit(m)
    write_manifest(ds_copy, m)  # with its checksum recomputed: the checks behind it
    with pytest.raises(ManifestError, match=match) as e:
        fastload.Dataset(ds_copy)
    assert str(e.value).startswith(str(ds_copy / "manifest.json"))


def test_missing_manifest_says_the_dataset_is_incomplete(ds_copy, tmp_path):
    (ds_copy / "manifest.json").unlink()
    with pytest.raises(IncompleteDatasetError, match="interrupted") as e:
        fastload.Dataset(ds_copy)
    assert str(ds_copy / "manifest.json") in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ManifestError)
    with pytest.raises(IncompleteDatasetError, match="no such dataset"):
        fastload.Dataset(tmp_path / "nope")
    (ds_copy / "manifest.json").mkdir()
    with pytest.raises(ManifestError, match="is a directory"):
        fastload.Dataset(ds_copy)


def test_a17_manifest_lists_a_missing_shard(ds_copy):
    path = shard_path(ds_copy)
    path.unlink()
    ds = fastload.Dataset(ds_copy)  # opening is lazy: the manifest itself is fine
    for read in (lambda: ds[0], lambda: ds.get_batch([1]), lambda: list(ds)):
        with pytest.raises(MissingShardError, match="does not exist") as e:
            read()
        assert str(e.value).startswith(str(path)) and isinstance(e.value, FileNotFoundError)
    report = verify_dataset(str(ds_copy))
    assert not report.ok and str(path) in report.problems[0]


def test_a18_leftover_tmp_files_beside_a_finished_dataset_are_ignored(ds_copy):
    (ds_copy / "shard-00000.fls.1a2b3c4d.tmp").write_bytes(b"half a shard")
    (ds_copy / "shard-00001.fls.deadbeef.tmp").write_bytes(b"")
    (ds_copy / "manifest.json.00000000.tmp").write_text('{"format": "fastload"')
    with fastload.Dataset(ds_copy) as ds:
        assert len(ds) == N and len(ds.shards) == 1
        for i, rec in enumerate(ds):
            assert_record(rec, ORIGINALS[i])
    assert verify_dataset(str(ds_copy)).ok


def test_replace_shard_helper_keeps_a_dataset_readable(ds_copy, small):
    """Sanity check of the helper the fuzz tests use: a resealed shard with an updated
    manifest reads back identically."""
    _, data, _, p = small
    replace_shard(ds_copy, 0, reseal(p))
    with fastload.Dataset(ds_copy) as ds:
        for i, rec in enumerate(ds):
            assert_record(rec, ORIGINALS[i])
    assert all_files(ds_copy)[shard_path(ds_copy).name] == data
