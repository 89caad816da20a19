"""Consistency of a shard's index: its block and record tables against each other and the file,
and its records' lengths against the schema. Pure functions of the decoded tables, so the
reader's checks at open are stated (and tested) apart from its reading."""

from __future__ import annotations

import numpy as np

from .record import RecordLayout
from .spec import CODEC_NAMES, CODEC_NONE, HEADER_SIZE, MAX_BLOCK_RAW_SIZE

__all__ = ["table_problems", "misfit_record"]


def table_problems(blocks: np.ndarray, records: np.ndarray, data_end: int) -> list[str]:
    """What is wrong with a block table and record table (the first instance of each kind of
    fault): every block must lie inside the data area (``HEADER_SIZE``..``data_end``), in
    order and without overlap, with a known codec and a bounded raw size; every record must
    point to the block that holds it and end inside that block's raw bytes."""
    b, r = blocks, records
    start = b["offset"].astype(np.int64)
    end = start + b["stored_size"].astype(np.int64)
    problems = []
    if len(b):
        bad = np.flatnonzero(
            (start < HEADER_SIZE) | (end > data_end) | (b["stored_size"] > (1 << 62))
        )
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
    if int(b["n_records"].sum(dtype=np.uint64)) != len(r):
        problems.append(f"blocks hold {int(b['n_records'].sum())} records, index has {len(r)}")
    elif len(r):
        owner = np.repeat(np.arange(len(b), dtype=np.uint32), b["n_records"])
        bad = np.flatnonzero(r["block"] != owner)
        problems += [
            f"record {i} points to block {r['block'][i]}, expected {owner[i]}" for i in bad[:1]
        ]
        rec_end = r["offset"].astype(np.int64) + r["length"].astype(np.int64)
        bad = np.flatnonzero(rec_end > b["raw_size"][owner].astype(np.int64))
        problems += [f"record {i} ends past the end of block {owner[i]}" for i in bad[:1]]
    return problems


def misfit_record(lengths: np.ndarray, layout: RecordLayout) -> tuple[int, str] | None:
    """The first record whose length does not fit the schema, and why; or None. A record of
    fixed-size fields only is exactly its fixed part: a longer one was written with another
    schema, and reading its first bytes would give wrong rows. Any other record holds at least
    its fixed part and var ends."""
    size = layout.header_size
    exact = not layout.var_fields
    bad = np.flatnonzero(lengths != size if exact else lengths < size)
    if not len(bad):
        return None
    r = int(bad[0])
    return r, (
        f"is {int(lengths[r])} bytes, but records of the manifest's schema are "
        f"{'exactly' if exact else 'at least'} {size} bytes: the shard does not match its "
        "manifest's schema"
    )
