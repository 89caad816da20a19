"""The binary layout of a fastload shard, declared once for the writer and the reader.

A shard file is::

    header  (HEADER_DTYPE, 32 bytes)
    block 0, block 1, ...            each compressed alone (or stored raw)
    index   = block table (n_blocks x BLOCK_DTYPE) + record table (n_records x RECORD_DTYPE)
    trailer (TRAILER_DTYPE, 56 bytes, at the very end)

All integers are little-endian. docs/format.md is the prose version of this module; if the
two disagree, this module is right and the document is a bug.
"""

from __future__ import annotations

import numpy as np

# Version 2 added the manifest's checksum (and the shard header's schema fingerprint);
# version 1 datasets still read. docs/format.md says what each version holds.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MAGIC = b"FASTLOAD"  # 8 bytes; no NUL, which numpy S8 would strip
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".fls"
# Parts written by parallel writers before they are merged into the manifest.
PARTS_DIR = "_parts"
TMP_SUFFIX = ".tmp"

HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("flags", "<u4"),
        # Version 2: xxh64 of the canonical JSON of the schema the records were written with
        # (Schema.fingerprint), so a reader can tell a shard that does not belong to the
        # manifest's schema. Zero, as reserved, in version 1.
        ("schema_hash", "<u8"),
        ("reserved", "V8"),
    ]
)
TRAILER_DTYPE = np.dtype(
    [
        ("index_offset", "<u8"),
        ("index_size", "<u8"),
        ("n_blocks", "<u8"),
        ("n_records", "<u8"),
        ("index_hash", "<u8"),  # xxh64 of the index bytes
        ("version", "<u4"),
        ("flags", "<u4"),
        ("magic", "S8"),
    ]
)
BLOCK_DTYPE = np.dtype(
    [
        ("offset", "<u8"),  # of the stored bytes, from the start of the file
        ("stored_size", "<u8"),
        ("raw_size", "<u8"),  # after decompression
        ("first_record", "<u8"),
        ("n_records", "<u4"),
        ("codec", "u1"),
        ("pad", "V3"),
        ("checksum", "<u8"),  # xxh64 of the stored bytes
    ]
)
RECORD_DTYPE = np.dtype(
    [
        ("block", "<u4"),
        ("offset", "<u4"),  # within the block's raw (decompressed) bytes
        ("length", "<u4"),
        ("checksum", "<u4"),  # low 32 bits of xxh64 of the record's bytes
    ]
)

HEADER_SIZE = HEADER_DTYPE.itemsize
TRAILER_SIZE = TRAILER_DTYPE.itemsize
MIN_SHARD_SIZE = HEADER_SIZE + TRAILER_SIZE

CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_NAMES = {CODEC_NONE: "none", CODEC_ZSTD: "zstd"}

# Records start at multiples of this within a block, so fixed fields keep natural alignment.
RECORD_ALIGN = 8
# A block is never larger than this once decompressed; a file claiming more is rejected
# before anything is allocated (decompression-bomb guard).
MAX_BLOCK_RAW_SIZE = 1 << 31

assert HEADER_SIZE == 32 and TRAILER_SIZE == 56
assert BLOCK_DTYPE.itemsize == 48 and RECORD_DTYPE.itemsize == 16


def index_size(n_blocks: int, n_records: int) -> int:
    """The byte size of an index holding ``n_blocks`` blocks and ``n_records`` records."""
    return n_blocks * BLOCK_DTYPE.itemsize + n_records * RECORD_DTYPE.itemsize
