"""Write the golden fastload dataset of the current format version to tests/format/data/v<N>/
(data/v1/, data/v2/ and data/v2-fixed/, version 2's fixed layout of the record table, were
written by earlier versions of this script).

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
V3_DIR = HERE / "data" / "v3"

# A 3x2 RGB PNG and a 3x2 lossless WebP, made once with Pillow and frozen here.
PNG_3X2 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000030000000208020000001216f14d0000001549444154789c63"
    "3cc125c7c0c0c0c0c0c0c400030011c600f484e11a010000000049454e44ae426082"
)
WEBP_3X2 = bytes.fromhex(
    "524946461e000000574542505650384c110000002f0240000007508522d7a3ff8188e87f0000"
)

# A 160x96 baseline JPEG (4:2:0, quality 40: 10 x 6 MCUs), made once with Pillow and frozen.
JPEG_160X96 = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300140e0f120f0d14121012171514181e32211e1c"
    "1c1e3d2c2e243249404c4b47404645505a736250556d5645466488656d777b8182814e608d978c7d96737e81"
    "7cffdb0043011517171e1a1e3b21213b7c5346537c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c"
    "7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7cffc0001108006000a0030122000211010311"
    "01ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303"
    "020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f024"
    "33627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a63646566"
    "6768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7"
    "b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc400"
    "1f0100030101010101010101010000000000000102030405060708090a0bffc400b511000201020404030407"
    "05040400010277000102031104052131061241510761711322328108144291a1b1c109233352f0156272d10a"
    "162434e125f11718191a262728292a35363738393a434445464748494a535455565758595a63646566676869"
    "6a737475767778797a82838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9"
    "bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9faffda000c030100"
    "02110311003f00e3c2d382d3c2d382d3b92a44c16942d4816942d7d25c4a4530b4a16a40b4a16be5ee75a913"
    "05a50b5205a50b5f4b712914c2d285a902d285af97b9d6a44c16942d4816942d7d25c4a4530b4a16a40b4a16"
    "be62e75a91305a705a785a705afa4b92a4520b4e0b4f0b4e0b5f2f73b148942d382d3c2d382d7d2dc95231c2"
    "d285a902d285ae9b9f18a4530b4a16a40b4a16be62e75a91305a50b5205a50b5f49712914c2d285a902d285a"
    "f97b9d6a44c16942d4816942d7d2dc4a4530b4a16a40b4a16be5ee75a91305a705a785a705afa4b8948a4169"
    "c169e169c16be62e75a91285a705a785a705afa4b8948a4169c169e169c16be5ee75a918e16942d4816942d7"
    "55cf8c52260b4a16a40b4a16be92e4a914c2d285a902d285af97b9d6a44c16942d48169c16be96e2522905a5"
    "0b5205a50b5f2f73ad48982d382d3c2d382d7d2dc4a4520b4e0b4f0b4e0b5f2f73ad48942d382d3c2d382d7d"
    "25c4a4520b4e0b4f0b4e0b5f3173ad48942d382d3c2d382d7d25c4a46385a50b5205a50b5d373e3148a61694"
    "2d4816942d7cc5ceb52260b4a16a40b4e0b5f4972548a416942d4816942d7cbdcec52260b4e0b4f0b4e0b5f4"
    "b72548a4169c169e169c16be5ee75a91285a705a785a705afa5b8948a4169c169e169c16be5ee75a91285a70"
    "5a785a705afa4b8948a4169c169e169c16be5ee75a918e16942d4816942d755cf8c52260b4a16a40b4e0b5f4"
    "971291482d285a902d285af98b9d6a44c169c169e169c16be92e2522905a705a785a705af97b9d6a44a169c1"
    "69e169c16be96e4a91482d382d3c2d382d7cbdceb52250b4e0b4f0b4e0b5f4971291482d382d3c2d382d7cc5"
    "ceb52250b4e0b5205a50b5f49712918e16942d48169c16baae7c6291482d285a902d285af97b9d6a44c169c1"
    "69e169c16be92e2522905a705a785a705af98b9d6a44a169c169e169c16be92e2522905a705a785a705af97b"
    "9d6a44a169c169e169c16be96e4a91482d382d3c2d382d7cbdceb52260b4a16a40b4a16be92e2522905a705a"
    "902d285af98b9d6a47ffd9"
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


# Version 3: version 2's fields, with JPEGs stored with their entropy index (image format id
# 4) in the image field of even records; odd ones keep their PNG or WebP.
V3_SCHEMA = V2_SCHEMA
V3_OPTIONS = V2_OPTIONS
V3_RECORDS = 9


def v3_record(i: int) -> dict:
    rec = v2_record(i)
    if i % 2 == 0:
        rec["img"] = JPEG_160X96
    return rec


def write_v3(dst: Path) -> None:
    import fastload

    assert fastload.format.FORMAT_VERSION == 3
    with fastload.Writer(dst, V3_SCHEMA, **V3_OPTIONS) as w:
        for i in range(V3_RECORDS):
            w.write(v3_record(i))


def write_v2(dst: Path) -> None:
    import fastload

    # (run only while the writer wrote version 2: kept to say what data/v2/ holds)
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
    parser.add_argument("--out", type=Path, default=HERE / "data", help="where to write v3/")
    args = parser.parse_args(argv)
    targets = {args.out / V3_DIR.name: write_v3}
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
