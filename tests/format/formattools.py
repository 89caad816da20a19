"""Helpers for the format tests: index-encoded records, an independent shard parser/forger.

The parser and forger below are written from docs/format.md with ``struct`` and the ``xxhash``
package, not with fastload's own dtypes or hashing, so a test that round-trips through them
also checks that the code matches the documented layout.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
import zstandard

import fastload

MAGIC = b"FASTLOAD"
HEADER = struct.Struct("<8sIIQ8s")  # magic, version, flags, schema_hash (v2), reserved
TRAILER = struct.Struct("<QQQQQII8s")  # index_offset, index_size, n_blocks, n_records,
#                                        index_hash, version, flags, magic
BLOCK = struct.Struct("<QQQQIB3sQ")  # offset, stored_size, raw_size, first_record, n_records,
#                                      codec, pad, checksum
RECORD = struct.Struct("<IIII")  # block, offset, length, checksum
assert (HEADER.size, TRAILER.size, BLOCK.size, RECORD.size) == (32, 56, 48, 16)
CODEC_NONE, CODEC_ZSTD = 0, 1
FIXED_SIZE = 1  # the flag of the fixed layout: record size (u64), then a u32 checksum each
# With FIXED_SIZE: the records per checksum (u64) after the record size, and a u32 checksum per
# group of that many records of a block, over the group's bytes from first record to last.
CHECKSUM_GROUPS = 2


def group_span(r: int, blocks: list[dict], record_size: int, group: int) -> tuple[int, int]:
    """Where the bytes record ``r``'s group checksum covers lie in its block (offset, length),
    per docs/format.md."""
    per_block = blocks[0]["n_records"]
    stride = -(-record_size // 8) * 8
    b, k = divmod(r, per_block)
    first = k // group * group
    count = min(group, blocks[b]["n_records"] - first)
    return first * stride, (count - 1) * stride + record_size


# --------------------------------------------------------------------------- test data

#: A schema with one field of most kinds; records built by ``index_record`` encode their index.
INDEX_SCHEMA = {
    "i": "int64",
    "b": "bytes",
    "s": "str",
    "flag": "bool",
    "f": "uint16[3]",
    "v": "float32[?]",
    "j": "json",
}


def index_bytes(i: int, n: int | None = None) -> bytes:
    """``n`` (default ``i % 41``, so 0 for some) incompressible bytes derived from ``i``."""
    n = i % 41 if n is None else n
    out = b""
    seed = i.to_bytes(8, "little")
    while len(out) < n:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return out[:n]


def index_record(i: int) -> dict[str, Any]:
    return {
        "i": i,
        "b": index_bytes(i),
        "s": f"rec-{i}-é✓" * (i % 3),
        "flag": i % 3 == 0,
        "f": np.array([i % 65536, (7 * i) % 65536, 3], np.uint16),
        "v": np.arange(i % 5, dtype=np.float32) * np.float32(i),
        "j": {"i": i, "l": [i, str(i), None, i % 2 == 0], "d": {"x": [i] * (i % 3)}},
    }


def values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def assert_record(got: dict, expected: dict, where: Any = "") -> None:
    assert list(got) == list(expected), (where, list(got), list(expected))
    for k in expected:
        assert values_equal(got[k], expected[k]), (where, k, got[k], expected[k])


def write_index_dataset(path: Path, n: int, *, schema=None, record=None, **options) -> Path:
    """A dataset of ``n`` index-encoded records (tiny blocks and shards by default)."""
    options.setdefault("block_size", 300)
    options.setdefault("compression", "zstd")  # zstd wherever it saves 5%: both kinds of block
    options.setdefault("shard_size", 2000)
    record = record or index_record
    with fastload.Writer(path, schema or INDEX_SCHEMA, **options) as w:
        for i in range(n):
            w.write(record(i))
    return path


def write_compressed_rows(path: Path, n: int) -> np.ndarray:
    """n rows of 512 uint16 (1 KiB each) that zstd compresses ~4x, in blocks of 8 rows;
    returns the rows."""
    rows = (np.arange(n * 512, dtype=np.uint64) * 2654435761 % 1000).astype(np.uint16)
    rows = rows.reshape(n, 512)
    with fastload.Writer(path, {"tokens": "uint16[512]"}, block_size=8192, compression="zstd") as w:
        for row in rows:
            w.write({"tokens": row})
    return rows


def assert_files_unchanged(folder: Path, sha256: dict[str, str]) -> None:
    """``folder`` holds exactly the files named in ``sha256``, each with that digest."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(sha256)
    for name, digest in sha256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def all_files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` by relative path (for byte-identical comparisons)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- shard bytes


def hash64(data) -> int:
    return xxhash.xxh64_intdigest(bytes(data))


def manifest_checksum(doc: dict) -> str:
    """The manifest checksum as docs/format.md defines it (XXH64 of the canonical JSON of
    every member but "checksum"), computed here without fastload's own code."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    text = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return f"xxh64:{hash64(text.encode('ascii')):016x}"


def write_manifest(root: Path, m: dict, *, seal: bool = True) -> None:
    """Write manifest ``m`` into the dataset at ``root``; with ``seal``, its checksum (if it
    has one) is recomputed first, so a test reaches the checks behind it."""
    if seal and "checksum" in m:
        m["checksum"] = manifest_checksum(m)
    (root / "manifest.json").write_text(json.dumps(m, indent=1))


def schema_hash(schema: dict[str, str]) -> int:
    """What a version-2 shard's header records of its schema (docs/format.md), computed here
    without fastload's own code."""
    doc = [{"name": k, "type": v} for k, v in schema.items()]
    return hash64(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def parse_shard(data: bytes) -> dict[str, Any]:
    """The header, trailer, block table and record table of a (valid) shard, as dicts."""
    magic, version, flags, schema_hash, reserved = HEADER.unpack_from(data, 0)
    t = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    trailer = dict(
        zip(
            (
                "index_offset",
                "index_size",
                "n_blocks",
                "n_records",
                "index_hash",
                "version",
                "flags",
                "magic",
            ),
            t,
        )
    )
    off = trailer["index_offset"]
    blocks = []
    for k in range(trailer["n_blocks"]):
        v = BLOCK.unpack_from(data, off + k * BLOCK.size)
        blocks.append(
            dict(
                zip(
                    (
                        "offset",
                        "stored_size",
                        "raw_size",
                        "first_record",
                        "n_records",
                        "codec",
                        "pad",
                        "checksum",
                    ),
                    v,
                )
            )
        )
    roff = off + trailer["n_blocks"] * BLOCK.size
    records = []
    record_size = None
    group = 1
    if flags & FIXED_SIZE:  # places computed as docs/format.md says, checksums read
        (record_size,) = struct.unpack_from("<Q", data, roff)
        stride = -(-record_size // 8) * 8
        per_block = blocks[0]["n_records"] if blocks else 1
        if flags & CHECKSUM_GROUPS:  # a checksum per group of a block's records, from its first
            (group,) = struct.unpack_from("<Q", data, roff + 8)
            per = [-(-b["n_records"] // group) for b in blocks]
            group_sums = struct.unpack_from(f"<{sum(per)}I", data, roff + 16)
            base = [sum(per[:b]) for b in range(len(blocks))]
            sums = [
                group_sums[base[r // per_block] + r % per_block // group]
                for r in range(trailer["n_records"])
            ]
        else:
            sums = struct.unpack_from(f"<{trailer['n_records']}I", data, roff + 8)
        for k, checksum in enumerate(sums):
            block, at = divmod(k, per_block)
            records.append(
                {"block": block, "offset": at * stride, "length": record_size, "checksum": checksum}
            )
    for k in range(0 if flags & FIXED_SIZE else trailer["n_records"]):
        v = RECORD.unpack_from(data, roff + k * RECORD.size)
        records.append(dict(zip(("block", "offset", "length", "checksum"), v)))
    stored = [data[b["offset"] : b["offset"] + b["stored_size"]] for b in blocks]
    return {
        "magic": magic,
        "version": version,
        "flags": flags,
        "schema_hash": schema_hash,
        "reserved": reserved,
        "trailer": trailer,
        "blocks": blocks,
        "records": records,
        "record_size": record_size,
        "group": group,
        "stored": stored,
    }


def raw_block(block: dict, stored: bytes) -> bytes:
    if block["codec"] == CODEC_ZSTD:
        return zstandard.ZstdDecompressor().decompress(stored)
    return stored


def build_shard(
    stored: list[bytes],
    blocks: list[dict],
    records: list[dict],
    *,
    version: int = 1,
    schema_hash: int = 0,
    trailer: dict | None = None,
    header_version: int | None = None,
    fix_offsets: bool = True,
    flags: int = 0,
    record_size: int | None = None,
    group: int = 1,
) -> bytes:
    """Lay out a shard from its parts, computing block offsets, the index and its hash.

    ``flags``: the header's and trailer's; with ``FIXED_SIZE``, the record table is
    ``record_size`` (default: the first record's length) and the records' checksums (their
    other fields are not written); with ``CHECKSUM_GROUPS`` too, ``group`` and the checksum of
    each group's first record. ``trailer`` overrides trailer fields after they are computed (to
    forge bad ones).
    """
    out = bytearray(
        HEADER.pack(
            MAGIC,
            version if header_version is None else header_version,
            flags,
            schema_hash,
            bytes(8),
        )
    )
    blocks = [dict(b) for b in blocks]
    for b, s in zip(blocks, stored):
        if fix_offsets:
            b["offset"], b["stored_size"] = len(out), len(s)
        out += s
    index = b"".join(
        BLOCK.pack(
            b["offset"],
            b["stored_size"],
            b["raw_size"],
            b["first_record"],
            b["n_records"],
            b["codec"],
            b.get("pad", b"\0\0\0"),
            b["checksum"],
        )
        for b in blocks
    )
    if flags & FIXED_SIZE:
        if record_size is None:
            record_size = records[0]["length"] if records else 0
        index += struct.pack("<Q", record_size)
        checked = records
        if flags & CHECKSUM_GROUPS:  # each group's first record carries its checksum
            index += struct.pack("<Q", group)
            per_block = max(blocks[0]["n_records"] if blocks else 1, 1)
            checked = [r for k, r in enumerate(records) if k % per_block % group == 0]
        index += b"".join(struct.pack("<I", r["checksum"]) for r in checked)
    else:
        index += b"".join(
            RECORD.pack(r["block"], r["offset"], r["length"], r["checksum"]) for r in records
        )
    t = {
        "index_offset": len(out),
        "index_size": len(index),
        "n_blocks": len(blocks),
        "n_records": len(records),
        "index_hash": hash64(index),
        "version": version,
        "flags": flags,
        "magic": MAGIC,
    }
    t.update(trailer or {})
    out += index
    out += TRAILER.pack(*t.values())
    return bytes(out)


def reseal(parsed: dict, *, recompress: bool = True, **kw) -> bytes:
    """Rebuild a (possibly edited) parsed shard with every checksum recomputed, so that a test
    reaches the checks behind the checksums (bounds, decoding). Edit the tables, or give
    ``parsed["raw"]`` (each block's new raw bytes, recompressed here), then reseal."""
    blocks, records = [dict(b) for b in parsed["blocks"]], [dict(r) for r in parsed["records"]]
    edited = parsed.get("raw") is not None
    raws = parsed["raw"] if edited else [raw_block(b, s) for b, s in zip(blocks, parsed["stored"])]
    stored = []
    for k, (b, raw) in enumerate(zip(blocks, raws)):
        if b["codec"] == CODEC_ZSTD and recompress:
            s = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(raw)
        else:
            s = raw if b["codec"] == CODEC_NONE else parsed["stored"][k]
        if edited:  # otherwise keep the table's sizes (a test may have forged them)
            b["raw_size"] = len(raw)
        b["checksum"] = hash64(s)
        stored.append(s)
    kw.setdefault("version", parsed["version"])
    # version 1 had no flags: a fixed-size shard resealed as version 1 gets an entry per record
    kw.setdefault("flags", parsed["flags"] if kw["version"] >= 2 else 0)
    group = parsed.get("group", 1) if kw["flags"] & CHECKSUM_GROUPS else 1
    for k, r in enumerate(records):
        if r["block"] < len(raws):
            raw = raws[r["block"]]
            at, n = r["offset"], r["length"]
            if group > 1:
                at, n = group_span(k, blocks, parsed["record_size"], group)
            r["checksum"] = hash64(raw[at : at + n]) & 0xFFFFFFFF
    kw.setdefault("schema_hash", parsed["schema_hash"])
    kw.setdefault("record_size", parsed.get("record_size"))
    kw.setdefault("group", group)
    return build_shard(stored, blocks, records, **kw)


def index_hash_of(data: bytes) -> str:
    """The manifest's spelling of a shard's hash (xxh64 of its index)."""
    t = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    return f"xxh64:{hash64(data[t[0] : t[0] + t[1]]):016x}"


def replace_shard(root: Path, s: int, data: bytes, *, update_manifest: bool = True) -> Path:
    """Overwrite shard ``s`` of the dataset at ``root`` (and its manifest entry, by default)."""
    m = json.loads((root / "manifest.json").read_text())
    path = root / m["shards"][s]["path"]
    path.unlink()  # a new inode: never rewrite a file some reader may still have mapped
    path.write_bytes(data)
    if update_manifest:
        t = TRAILER.unpack_from(data, len(data) - TRAILER.size)
        m["shards"][s].update(bytes=len(data), hash=index_hash_of(data), records=t[3], blocks=t[2])
        m["records"] = sum(e["records"] for e in m["shards"])
        write_manifest(root, m)
    return path


class MemSource:
    """An in-memory ByteSource: ``mapped`` exposes the whole buffer like a local map,
    otherwise records are fetched with ranged reads like an object store."""

    def __init__(self, data: bytes, name: str = "mem://shard.fls", mapped: bool = True) -> None:
        self.data = bytes(data)
        self.name = name
        self.size = len(self.data)
        self.buffer = memoryview(self.data) if mapped else None

    def read(self, offset: int, length: int):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise fastload.ShardFormatError(f"{self.name}: read past the end")
        return self.data[offset : offset + length]

    def close(self) -> None:
        pass
