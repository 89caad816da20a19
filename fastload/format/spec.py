"""The binary layout of a fastload shard, declared once for the writer and the reader.

A shard file is::

    header  (HEADER_DTYPE, 32 bytes)
    block 0, block 1, ...            each compressed alone (or stored raw)
    index   = block table (n_blocks x BLOCK_DTYPE) + record table
    trailer (TRAILER_DTYPE, 56 bytes, at the very end)

The record table is ``n_records x RECORD_DTYPE``, or, in a shard whose flags hold
``FLAG_FIXED_SIZE`` (version 2), the records' one size (RECORD_SIZE_DTYPE) followed by
``n_records x CHECKSUM_DTYPE``: each record's block, offset and length follow from the block
table (see ``FixedRecords`` in shard_records.py). With ``FLAG_CHECKSUM_GROUPS`` too, the size
is followed by the records per checksum (GROUP_DTYPE), and the checksums are one per group of
that many records of a block.

All integers are little-endian. docs/format.md is the prose version of this module; if the
two disagree, this module is right and the document is a bug.
"""

from __future__ import annotations

import numpy as np

# Version 2 added the manifest's checksum (and the shard header's schema fingerprint);
# version 3 the JPEG images stored with their entropy index (image format id 4); earlier
# datasets still read. docs/format.md says what each version holds.
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
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
# The fixed layout's record table: the one record size, then a checksum per record.
RECORD_SIZE_DTYPE = np.dtype("<u8")
CHECKSUM_DTYPE = np.dtype("<u4")  # low 32 bits of xxh64 of the record's bytes
GROUP_DTYPE = np.dtype("<u8")  # records per checksum (FLAG_CHECKSUM_GROUPS)

# Header and trailer flags (both carry the same). A reader refuses a bit it does not know, a
# header and trailer that disagree, and any flag in a version-1 shard (it had none).
# FLAG_FIXED_SIZE (version 2): every record of the shard has one size, and the record table
# holds only their checksums: a record costs 4 bytes of index instead of 16, and a reader
# computes where it lies instead of keeping a table per record.
FLAG_FIXED_SIZE = 1
# FLAG_CHECKSUM_GROUPS (version 2, with FLAG_FIXED_SIZE only): records smaller than
# CHECKSUM_GROUP_BYTES share checksums, one per group of consecutive records of a block (from
# its first; the block's last group may hold fewer), over the group's bytes from its first
# record's start to its last one's end: 16-byte records cost 1 byte of index each, not 4, and
# reading one hashes its group's 64 bytes.
FLAG_CHECKSUM_GROUPS = 2
KNOWN_FLAGS = FLAG_FIXED_SIZE | FLAG_CHECKSUM_GROUPS
CHECKSUM_GROUP_BYTES = 64

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


def index_size(n_blocks: int, n_records: int, flags: int = 0) -> int:
    """The largest byte size of an index holding ``n_blocks`` blocks and ``n_records``
    records, in the layout ``flags`` say: its size, but with ``FLAG_CHECKSUM_GROUPS``, where
    the checksums also depend on how the blocks hold the records (at most one a record)."""
    if flags & FLAG_FIXED_SIZE:
        records = RECORD_SIZE_DTYPE.itemsize + n_records * CHECKSUM_DTYPE.itemsize
        if flags & FLAG_CHECKSUM_GROUPS:
            records += GROUP_DTYPE.itemsize
    else:
        records = n_records * RECORD_DTYPE.itemsize
    return n_blocks * BLOCK_DTYPE.itemsize + records


def checksum_group(record_size: int) -> int:
    """Records per checksum in a shard of ``record_size``-byte records: as many as fit in
    CHECKSUM_GROUP_BYTES laid at RECORD_ALIGN, at least 1 (1 for empty records too)."""
    stride = -(-record_size // RECORD_ALIGN) * RECORD_ALIGN
    return max(1, CHECKSUM_GROUP_BYTES // stride) if stride else 1
