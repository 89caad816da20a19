"""Write the golden fastload datasets of the current format version to tests/format/data/v<N>/
(and data/v2-fixed/, version 2's fixed layout of the record table).

    python tests/format/make_golden.py            # writes only those that do not exist
    python tests/format/make_golden.py --force    # only if the files were never released

The files are committed and test_golden.py reads them with the current code, so a change that
breaks reading old datasets fails CI. Once committed they must never be regenerated: a new
format version gets its own directory (data/v3/) and its own generator function, and the
generators of earlier versions stay here only to say what their records hold (the current
writer cannot write an earlier version).

The records are built from constants and integer arithmetic only (no Pillow, no RNG), so
test_golden.py can rebuild the expected values on any machine.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
V1_DIR = HERE / "data" / "v1"
V2_DIR = HERE / "data" / "v2"

# A 3x2 RGB PNG and a 3x2 lossless WebP, made once with Pillow and frozen here.
PNG_3X2 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000030000000208020000001216f14d0000001549444154789c63"
    "3cc125c7c0c0c0c0c0c0c400030011c600f484e11a010000000049454e44ae426082"
)
WEBP_3X2 = bytes.fromhex(
    "524946461e000000574542505650384c110000002f0240000007508522d7a3ff8188e87f0000"
)

V1_SCHEMA = {
    "i": "int64",
    "u8": "uint8",
    "f32": "float32",
    "flag": "bool",
    "name": "str",
    "blob": "bytes",
    "meta": "json",
    "vec": "float64[3]",
    "toks": "uint16[?]",
    "img": "image",
}
V1_OPTIONS = {"block_size": 160, "shard_size": 700, "compression": "zstd", "level": 3}
V1_RECORDS = 12


def v1_blob(i: int) -> bytes:
    """Incompressible bytes for even records (raw blocks), repetitive ones for odd (zstd)."""
    if i % 2:
        return bytes([i]) * (10 * i)
    out, seed = b"", b"fastload-golden-%d" % i
    while len(out) < 40 + i:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return out[: 40 + i]


def v1_record(i: int) -> dict:
    return {
        "i": i * 1_000_003 - 5,
        "u8": (i * 37) % 256,
        "f32": i / 4 - 1.5,  # exactly representable in float32
        "flag": i % 3 == 1,
        "name": ["", "zero", "一", "deux ✓", "🧪"][i % 5] * (1 + i % 2),
        "blob": v1_blob(i),
        "meta": {"i": i, "tags": ["a"] * (i % 3), "nested": {"ok": i % 2 == 0, "n": None}},
        "vec": np.array([i, -0.5 * i, 2.0**i], np.float64),
        "toks": np.arange(i % 5, dtype=np.uint16) * 1000 + i,
        "img": PNG_3X2 if i % 2 == 0 else WEBP_3X2,
    }


# Version 2: version 1's fields, plus a variable shape of two dimensions and a fixed array;
# blocks of two records, and records larger than the block size, which get a block of their
# own (one compressed, larger than 4 block sizes; one raw).
V2_SCHEMA = {**V1_SCHEMA, "grid": "float32[?,2]", "pair": "uint16[2]"}
V2_OPTIONS = {"block_size": 700, "shard_size": 1500, "compression": "zstd", "level": 3}
V2_RECORDS = 13
V2_LARGE = 7  # this record's blob is 4,000 bytes of a repeated pattern
V2_RANDOM = 2


def v2_record(i: int) -> dict:
    rec = v1_record(i)
    rec["grid"] = np.arange(2 * (i % 4), dtype=np.float32).reshape(-1, 2) * np.float32(i - 6)
    rec["pair"] = np.array([i, 65535 - i], np.uint16)
    if i == V2_LARGE:
        rec["blob"] = b"fastload-v2 " * 333 + b"done"
    if i == V2_RANDOM:
        rec["blob"] = v1_blob(2000 - 40)  # 2,000 bytes that do not compress: a raw block
    return rec


# Version 2's fixed layout (a schema of fixed-size fields only: a checksum per record, places
# computed from the block table), in data/v2-fixed/: 1,076-byte records (1,080 apart), three
# to a block, blocks alternately of incompressible bytes (raw) and repetitive ones (zstd),
# shards of three blocks, and a last block of two records.
V2_FIXED_DIR = HERE / "data" / "v2-fixed"
V2_FIXED_SCHEMA = {
    "i": "int64",
    "u8": "uint8",
    "f32": "float32",
    "flag": "bool",
    "vec": "float64[3]",
    "pair": "uint16[2]",
    "toks": "uint16[5]",
    "noise": "uint8[1024]",
}
V2_FIXED_OPTIONS = {"block_size": 3300, "shard_size": 9000, "compression": "zstd", "level": 3}
V2_FIXED_RECORDS = 20


def v2_fixed_record(i: int) -> dict:
    noise = v1_blob(2 * (i + 492))[:1024] if (i // 3) % 2 == 0 else bytes([i]) * 1024
    return {
        "i": i * 1_000_003 - 5,
        "u8": (i * 37) % 256,
        "f32": i / 4 - 1.5,
        "flag": i % 3 == 1,
        "vec": np.array([i, -0.5 * i, 2.0**i], np.float64),
        "pair": np.array([i, 65535 - i], np.uint16),
        "toks": np.arange(5, dtype=np.uint16) * 1000 + i,
        "noise": np.frombuffer(noise, np.uint8),
    }


def write_v2(dst: Path) -> None:
    import fastload

    assert fastload.format.FORMAT_VERSION == 2
    with fastload.Writer(dst, V2_SCHEMA, **V2_OPTIONS) as w:
        for i in range(V2_RECORDS):
            w.write(v2_record(i))


def write_v2_fixed(dst: Path) -> None:
    import fastload

    with fastload.Writer(dst, V2_FIXED_SCHEMA, **V2_FIXED_OPTIONS) as w:
        for i in range(V2_FIXED_RECORDS):
            w.write(v2_fixed_record(i))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="replace existing golden files")
    parser.add_argument(
        "--out", type=Path, default=HERE / "data", help="where to write v2/ and v2-fixed/"
    )
    args = parser.parse_args(argv)
    targets = {args.out / V2_DIR.name: write_v2, args.out / V2_FIXED_DIR.name: write_v2_fixed}
    for dst, write in targets.items():
        if dst.exists():
            if not args.force:
                print(
                    f"{dst} exists; golden files are never regenerated (see the docstring)",
                    file=sys.stderr,
                )
                continue
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        write(dst)
        for p in sorted(dst.iterdir()):
            print(f"{dst.name}/{p.name}  {hashlib.sha256(p.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
