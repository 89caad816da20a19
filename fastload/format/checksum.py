"""Checksums of blocks, records and indexes (XXH64, computed in the compiled core), and of
JSON documents (the manifest, a schema) through their canonical form."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .. import _core

__all__ = [
    "hash64",
    "record_checksum",
    "record_checksums",
    "first_bad_record",
    "format_hash",
    "canonical_json",
    "hash_json",
]


def hash64(data) -> int:
    """XXH64 (seed 0) of a buffer; the GIL is released while large inputs are hashed."""
    return _core.xxh64(data)


def record_checksum(data) -> int:
    """The 32-bit checksum stored for each record: the low half of its XXH64."""
    return _core.xxh64(data) & 0xFFFFFFFF


def record_checksums(buf, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """:func:`record_checksum` of many slices of ``buf`` at once (uint32 array)."""
    hashes = _core.xxh64_slices(
        buf,
        np.ascontiguousarray(offsets, dtype=np.uint64),
        np.ascontiguousarray(lengths, dtype=np.uint64),
    )
    return (hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def first_bad_record(buf, offsets: np.ndarray, lengths: np.ndarray, expected: np.ndarray) -> int:
    """Index of the first slice of ``buf`` whose checksum differs from ``expected``, or -1."""
    return _core.check_slices(
        buf,
        np.ascontiguousarray(offsets, dtype=np.uint64),
        np.ascontiguousarray(lengths, dtype=np.uint64),
        np.ascontiguousarray(expected, dtype=np.uint32),
    )


def format_hash(value: int) -> str:
    """How the manifest spells a shard hash."""
    return f"xxh64:{value:016x}"


def canonical_json(value: Any) -> bytes:
    """The one byte string a JSON value hashes as: keys sorted, no whitespace, every character
    outside ASCII written as a ``\\uXXXX`` escape. Two documents that parse to the same value
    give the same bytes, however they were indented or re-saved, and any change to the value
    changes them. Raises ValueError for NaN or infinities (which JSON cannot hold)."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def hash_json(value: Any) -> int:
    """XXH64 of :func:`canonical_json` of ``value``."""
    return hash64(canonical_json(value))
