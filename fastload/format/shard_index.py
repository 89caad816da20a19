"""Consistency of a shard's index: its block table against the file, its record table (either
layout) against the blocks, and its records' lengths against the schema. Pure functions of the
decoded tables, so the reader's checks at open are stated (and tested) apart from its reading.

A record table is read where it lies (a shard's mapped index) and checked ``CHUNK`` records at
a time, so that opening a shard of many millions of records allocates a few MB, not a
temporary array per record."""

from __future__ import annotations

import numpy as np

from .record import RecordLayout
from .spec import (
    CHECKSUM_DTYPE,
    CODEC_NAMES,
    CODEC_NONE,
    HEADER_SIZE,
    MAX_BLOCK_RAW_SIZE,
    RECORD_ALIGN,
)

__all__ = [
    "block_problems",
    "entry_problems",
    "fixed_problems",
    "group_problems",
    "misfit_record",
    "CHUNK",
]

CHUNK = 1 << 20  # records checked at a time


def block_problems(blocks: np.ndarray, data_end: int) -> list[str]:
    """What is wrong with a block table (the first instance of each kind of fault): every
    block must lie inside the data area (``HEADER_SIZE``..``data_end``), in order and without
    overlap, with a known codec and a bounded raw size, and its ``first_record`` must be the
    running sum of the blocks' record counts."""
    b = blocks
    problems: list[str] = []
    if not len(b):
        return problems
    start = b["offset"].astype(np.int64)
    end = start + b["stored_size"].astype(np.int64)
    bad = np.flatnonzero((start < HEADER_SIZE) | (end > data_end) | (b["stored_size"] > (1 << 62)))
    problems += [f"block {i} lies outside the data area" for i in bad[:1]]
    bad = np.flatnonzero(start[1:] < end[:-1])
    problems += [f"block {i + 1} overlaps block {i}" for i in bad[:1]]
    bad = np.flatnonzero(b["raw_size"] > MAX_BLOCK_RAW_SIZE)
    problems += [
        f"block {i} claims {b['raw_size'][i]} raw bytes (limit {MAX_BLOCK_RAW_SIZE})"
        for i in bad[:1]
    ]
    bad = np.flatnonzero(~np.isin(b["codec"], list(CODEC_NAMES)))
    problems += [f"block {i} has unknown codec {b['codec'][i]}" for i in bad[:1]]
    bad = np.flatnonzero((b["codec"] == CODEC_NONE) & (b["stored_size"] != b["raw_size"]))
    problems += [f"raw block {i} has stored size != raw size" for i in bad[:1]]
    first = np.concatenate(([0], np.cumsum(b["n_records"], dtype=np.uint64)[:-1]))
    bad = np.flatnonzero(b["first_record"] != first)
    problems += [
        f"block {i} says its first record is {b['first_record'][i]}, expected {first[i]}"
        for i in bad[:1]
    ]
    return problems


def _held(blocks: np.ndarray) -> int:
    return int(blocks["n_records"].sum(dtype=np.uint64))


def entry_problems(blocks: np.ndarray, records: np.ndarray) -> list[str]:
    """What is wrong with a record table of one entry per record: each must point to the
    block that holds it (blocks hold records in order, as many as their counts say) and end
    inside that block's raw bytes."""
    held = _held(blocks)
    if held != len(records):
        return [f"blocks hold {held} records, index has {len(records)}"]
    ends = np.cumsum(blocks["n_records"], dtype=np.int64)
    raw_size = blocks["raw_size"].astype(np.int64)
    problems: list[str] = []
    for a in range(0, len(records), CHUNK):
        r = records[a : a + CHUNK]
        owner = np.searchsorted(ends, np.arange(a, a + len(r)), side="right")
        bad = np.flatnonzero(r["block"] != owner)
        if len(bad) and not problems:
            i = int(bad[0])
            problems.append(f"record {a + i} points to block {r['block'][i]}, expected {owner[i]}")
        rec_end = r["offset"].astype(np.int64) + r["length"].astype(np.int64)
        bad = np.flatnonzero(rec_end > raw_size[owner])
        if len(bad):
            i = int(bad[0])
            problems.append(f"record {a + i} ends past the end of block {owner[i]}")
            break
    return problems


def fixed_problems(blocks: np.ndarray, n_records: int, record_size: int) -> list[str]:
    """What is wrong with a shard of the fixed layout: its records, all ``record_size``
    bytes, must fill its blocks in order (every block but the last holds as many as the
    first, the last at least one), and each block's raw bytes must be exactly what its
    records take laid end to end at ``RECORD_ALIGN``."""
    if record_size > MAX_BLOCK_RAW_SIZE:
        return [f"records of {record_size} bytes (limit {MAX_BLOCK_RAW_SIZE})"]
    held = _held(blocks)
    if held != n_records:
        return [f"blocks hold {held} records, index has {n_records}"]
    if not len(blocks):
        return []
    counts = blocks["n_records"].astype(np.int64)
    per_block = int(counts[0])
    bad = np.flatnonzero(counts[:-1] != per_block)
    if per_block == 0 or len(bad) or not 1 <= counts[-1] <= per_block:
        i = int(bad[0]) if len(bad) else (0 if per_block == 0 else len(counts) - 1)
        return [
            f"block {i} holds {counts[i]} records; a shard of fixed-size records has "
            f"{per_block} in every block but the last, and 1 to {per_block} in that"
        ]
    stride = -(-record_size // RECORD_ALIGN) * RECORD_ALIGN
    expected = (counts - 1) * stride + record_size
    bad = np.flatnonzero(blocks["raw_size"].astype(np.int64) != expected)
    return [
        f"block {i} has {blocks['raw_size'][i]} raw bytes, but {counts[i]} records of "
        f"{record_size} bytes take {expected[i]}"
        for i in bad[:1]
    ]


def group_problems(blocks: np.ndarray, group: int, table_bytes: int) -> list[str]:
    """What is wrong with the checksums of a shard of fixed-size records in groups of
    ``group`` (its blocks checked already by :func:`fixed_problems`): ``table_bytes`` must be
    one checksum per group of each block's records."""
    if not 2 <= group <= MAX_BLOCK_RAW_SIZE:
        return [f"{group} records per checksum"]
    counts = blocks["n_records"].astype(np.int64)
    groups = int((-(-counts // group)).sum())
    if table_bytes != groups * CHECKSUM_DTYPE.itemsize:
        return [
            f"the record table has {table_bytes} bytes of checksums, but {len(counts)} blocks "
            f"in groups of {group} records need {groups}"
        ]
    return []


def misfit_record(lengths: np.ndarray, layout: RecordLayout) -> tuple[int, str] | None:
    """The first record whose length does not fit the schema, and why; or None. A record of
    fixed-size fields only is exactly its fixed part: a longer one was written with another
    schema, and reading its first bytes would give wrong rows. Any other record holds at least
    its fixed part and var ends."""
    size = layout.header_size
    exact = not layout.var_fields
    for a in range(0, len(lengths), CHUNK):
        part = lengths[a : a + CHUNK]
        bad = np.flatnonzero(part != size if exact else part < size)
        if len(bad):
            r = a + int(bad[0])
            return r, (
                f"is {int(lengths[r])} bytes, but records of the manifest's schema are "
                f"{'exactly' if exact else 'at least'} {size} bytes: the shard does not match "
                "its manifest's schema"
            )
    return None
