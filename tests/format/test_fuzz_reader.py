"""Fuzzing the shard reader (docs/reliability.md F6): random bytes, bit flips, truncations, splices,
and forged shards whose checksums were recomputed (so the bounds checks behind them are reached).

Opening, reading every record (ds[i]), get_batch and verify's problems() must either give the
exact original records or raise a fastload.FastloadError -- never another exception, a crash or
a huge allocation. With verify=False, or with checksums forged to match, the data may differ,
but the only exceptions allowed are still FastloadErrors.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fastload
from fastload import FastloadError
from fastload.format.record import RecordLayout
from fastload.format.shard_reader import ShardReader

from .formattools import (
    FIXED_SIZE,
    MemSource,
    assert_record,
    build_shard,
    index_bytes,
    index_record,
    parse_shard,
    raw_block,
    reseal,
    write_index_dataset,
)

SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
FUZZ = settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=SLOW_OK)
NAME = "mem://fuzz/shard-00000.fls"
N = 24


def fuzz_record(i: int) -> dict:
    """An index record; some carry 150 random bytes, so their blocks are stored raw."""
    rec = index_record(i)
    if i % 8 < 4:
        rec["b"] = index_bytes(i, 150)
    return rec


# The fixed layout (a schema of fixed-size fields: a checksum per record, places computed):
# 140-byte records, two to a block, some random (raw blocks), some repetitive (zstd blocks).
FIXED_SCHEMA = {"i": "int64", "f": "uint16[3]", "x": "float32", "v": "uint8[120]"}


def fixed_fuzz_record(i: int) -> dict:
    v = index_bytes(i, 120) if i % 8 < 4 else bytes([i % 256]) * 120
    return {
        "i": i,
        "f": np.array([i, 7 * i, 3], np.uint16),
        "x": i / 8,  # exactly a float32
        "v": np.frombuffer(v, np.uint8),
    }


class Case:
    """A one-shard dataset of index records, its shard bytes, and a second, different shard;
    ``fixed``: of fixed-size records (the fixed layout)."""

    def __init__(self, root: Path, fixed: bool = False) -> None:
        self.dir = root
        self.fixed = fixed
        schema, record, block_size = (
            (FIXED_SCHEMA, fixed_fuzz_record, 300) if fixed else (None, fuzz_record, 400)
        )
        path = write_index_dataset(
            self.dir / "a",
            N,
            schema=schema,
            block_size=block_size,
            shard_size=1 << 20,
            record=record,
        )
        self.ds = fastload.Dataset(path)
        self.info = self.ds.shards[0]
        self.data = (path / self.info.path).read_bytes()
        self.parsed = parse_shard(self.data)
        self.raws = [raw_block(b, s) for b, s in zip(self.parsed["blocks"], self.parsed["stored"])]
        other = write_index_dataset(
            self.dir / "b",
            N,
            schema=schema,
            block_size=300,
            shard_size=1 << 20,
            record=lambda i: record(i + 1000),
        )
        self.other = (other / "shard-00000.fls").read_bytes()
        self.originals = [record(i) for i in range(N)]


@pytest.fixture(scope="module", params=["entries", "fixed"])
def case(tmp_path_factory, request):
    c = Case(tmp_path_factory.mktemp("fuzz"), fixed=request.param == "fixed")
    assert len(c.ds.shards) == 1 and len(c.parsed["blocks"]) >= 4
    assert len({b["codec"] for b in c.parsed["blocks"]}) == 2  # raw and zstd blocks
    assert (c.parsed["record_size"] is not None) == c.fixed  # the layout asked for
    yield c
    c.ds.close()


def exercise(
    case: Case,
    data: bytes,
    *,
    expected=True,
    verify=True,
    mapped=True,
    batch=(N - 1, 0, 3, 3, -5, 11),
    exact=True,
) -> str:
    """Open ``data`` as the dataset's only shard and read everything. Returns "ok" or the
    FastloadError's class name; any other exception propagates. With ``exact``, successful
    reads must return the original records."""
    ds = case.ds
    ds.close()
    ds.verify = verify
    try:
        ds._readers[0] = reader = ShardReader(
            MemSource(data, NAME, mapped),
            expected=case.info if expected else None,
            verify=verify,
            layout=RecordLayout(ds.schema),
        )
        got = [ds[i] for i in range(N)]
        cols = ds.get_batch(list(batch))
        problems = list(reader.problems())
    except FastloadError as e:
        assert str(e).startswith(NAME) or "manifest" in str(e), e
        return type(e).__name__
    finally:
        ds.verify = True
    assert len(got) == N and len(cols["i"]) == len(batch)
    if exact:
        for i in range(N):
            assert_record(got[i], case.originals[i], i)
        assert cols["i"].tolist() == [case.originals[i]["i"] for i in batch]
        if case.fixed:
            assert np.array_equal(cols["v"], np.stack([case.originals[i]["v"] for i in batch]))
        else:
            assert cols["b"] == [case.originals[i]["b"] for i in batch]
        assert all("block" in p for p in map(str, problems))  # only padding can be off
    return "ok"


def test_exercise_accepts_the_valid_shard(case):
    for mapped in (True, False):
        for expected in (True, False):
            assert exercise(case, case.data, mapped=mapped, expected=expected) == "ok"


@FUZZ
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes(case, data):
    for expected in (True, False):
        assert exercise(case, data, expected=expected) != "ok"


@FUZZ
@given(
    st.binary(min_size=0, max_size=300),
    st.binary(min_size=0, max_size=300),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**20),
)
def test_random_bytes_between_valid_header_and_trailer(case, head, body, n, size):
    """Plausible-looking files: the right magic and version at both ends (and, for the fixed
    layout, its flag in both), random inside."""
    version, flags = (2, FIXED_SIZE) if case.fixed else (1, 0)
    t = struct.pack(
        "<QQQQQII8s",
        32 + len(body) - min(size, len(body)),
        min(size, len(body)),
        n % 7,
        n % 50,
        n,
        version,
        flags,
        b"FASTLOAD",
    )
    data = b"FASTLOAD" + struct.pack("<II", version, flags) + bytes(16) + body + t
    for expected in (True, False):
        exercise(case, data, expected=expected, exact=False)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=8),
    st.booleans(),
    st.booleans(),
)
def test_random_bit_flips(case, flips, expected, mapped):
    bad = bytearray(case.data)
    for pos, bit in flips:
        bad[pos % len(bad)] ^= 1 << bit
    event(exercise(case, bytes(bad), expected=expected, mapped=mapped))


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=8),
    st.booleans(),
)
def test_random_bit_flips_with_verify_off(case, flips, mapped):
    """verify=False: payload damage may go unnoticed (the documented contract), but decoding
    damaged bytes never raises anything but a FastloadError."""
    bad = bytearray(case.data)
    for pos, bit in flips:
        bad[pos % len(bad)] ^= 1 << bit
    event(exercise(case, bytes(bad), verify=False, mapped=mapped, exact=False))


@FUZZ
@given(st.integers(0, 10**6), st.binary(max_size=100), st.booleans())
def test_truncations_and_garbage_tails(case, cut, tail, expected):
    data = case.data[: cut % len(case.data)] + tail
    assert exercise(case, data, expected=expected) != "ok" or data == case.data


@FUZZ
@given(st.integers(0, 10**6), st.integers(0, 10**6), st.booleans())
def test_splices_of_two_valid_shards(case, a, b, first_is_ours):
    x, y = (case.data, case.other) if first_is_ours else (case.other, case.data)
    data = x[: a % (len(x) + 1)] + y[b % (len(y) + 1) :]
    # against the manifest, only the original shard itself may read successfully
    result = exercise(case, data, expected=True)
    assert result != "ok" or data == case.data


# --------------------------------------------------------------------------- forged shards

INTERESTING = [
    0,
    1,
    2,
    7,
    8,
    31,
    32,
    255,
    2**16,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**40,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
]
U32 = {"block", "offset", "length", "checksum", "n_records"}


def clamp(field: str, value: int) -> int:
    """Keep a forged value inside its field's width (wider values cannot be written)."""
    return min(value, 2**32 - 1 if field in U32 else (255 if field == "codec" else 2**64 - 1))


@st.composite
def forgeries(draw, case: Case):
    p = {
        **case.parsed,
        "blocks": [dict(b) for b in case.parsed["blocks"]],
        "records": [dict(r) for r in case.parsed["records"]],
        "raw": list(case.raws),
    }
    fix_offsets = True
    kinds = ["raw", "raw", "record", "block"] + (["record-size"] if case.fixed else ["var-end"])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        if kind == "raw":  # change bytes inside a block's raw content
            k = draw(st.integers(0, len(p["raw"]) - 1))
            raw = bytearray(p["raw"][k])
            for _ in range(draw(st.integers(1, 4))):
                raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
            p["raw"][k] = bytes(raw)
        elif kind == "var-end":  # a record's own field lengths (u32 after its fixed region)
            r = draw(st.integers(0, N - 1))
            rec = p["records"][r]
            layout = case.ds._layout
            j = draw(st.integers(0, len(layout.var_fields) - 1))
            at = rec["offset"] + layout.fixed_size + 4 * j
            raw = bytearray(p["raw"][rec["block"]])
            value = draw(st.sampled_from(INTERESTING[:12]) | st.integers(0, 300))
            raw[at : at + 4] = min(value, 2**32 - 1).to_bytes(4, "little")
            p["raw"][rec["block"]] = bytes(raw)
        elif kind == "record-size":  # the fixed layout's one size
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, 100))
            p["record_size"] = clamp("record_size", value)
        else:  # a table entry (the fixed layout stores only each record's checksum)
            table = p["records"] if kind == "record" else p["blocks"]
            e = draw(st.integers(0, len(table) - 1))
            stored = ["checksum"] if kind == "record" and case.fixed else table[e]
            field = draw(st.sampled_from([f for f in stored if f != "pad"]))
            if kind == "block" and field in ("offset", "stored_size"):
                fix_offsets = False
            orig = table[e][field]
            value = draw(st.sampled_from(INTERESTING) | st.integers(max(0, orig - 3), orig + 3))
            table[e][field] = clamp(field, value)
    return p, fix_offsets


def forge(p: dict, fix_offsets: bool) -> bytes:
    if fix_offsets:
        return reseal(p)  # every checksum recomputed over the edited content
    # edited block offsets/sizes: lay out the original blocks, let the index point elsewhere
    return build_shard(
        p["stored"],
        p["blocks"],
        p["records"],
        fix_offsets=False,
        version=p["version"],
        schema_hash=p["schema_hash"],
        flags=p["flags"],
        record_size=p["record_size"],
    )


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=SLOW_OK)
@given(st.data())
def test_forged_shards_with_valid_checksums(case, data):
    p, fix_offsets = data.draw(forgeries(case))
    try:
        forged = forge(p, fix_offsets)
    except (OverflowError, ValueError, IndexError):  # struct cannot pack it: not a file
        return
    for mapped in (True, False):
        event(exercise(case, forged, expected=False, mapped=mapped, exact=False))
