"""ShardWriter: the bulk path (add_many, used for token files) must write exactly the bytes that
one add() per record writes."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fastload.format.codec import BlockCompressor
from fastload.format.shard_writer import ShardWriter

from .formattools import parse_shard

pytestmark = pytest.mark.skipif(not hasattr(ShardWriter, "add_many"), reason="no add_many")


def shard_bytes(
    rows: np.ndarray, bulk: list[tuple[int, int]] | None, block_size: int, compression: str
) -> bytes:
    """A shard of ``rows``: one add() each, or add_many over the (start, stop) ranges in
    ``bulk`` and add() for the rows between them."""
    out = io.BytesIO()
    w = ShardWriter(out, BlockCompressor(compression), block_size, schema_hash=7)
    i = 0
    for start, stop in bulk or []:
        for j in range(i, start):
            w.add(rows[j].tobytes())
        w.add_many(rows[start:stop])
        i = stop
    for j in range(i, len(rows)):
        w.add(rows[j].tobytes())
    assert w.records_written == len(rows)
    w.finish()
    return out.getvalue()


@pytest.mark.parametrize("size", [1, 8, 13, 64, 100, 101, 300])
@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_add_many_matches_add(size, compression):
    rng = np.random.default_rng(size)
    rows = rng.integers(0, 4, (97, size), dtype=np.uint8)  # compressible: both codecs appear
    rows[::5] = rng.integers(0, 256, (len(rows[::5]), size), dtype=np.uint8)
    expected = shard_bytes(rows, None, 100, compression)
    for bulk in ([(0, 97)], [(3, 50)], [(0, 1), (1, 2), (40, 97)], [(10, 10), (11, 96)]):
        assert shard_bytes(rows, bulk, 100, compression) == expected, bulk
    p = parse_shard(expected)
    assert sum(b["n_records"] for b in p["blocks"]) == 97
