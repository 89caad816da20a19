"""A local shard's index, of either layout, is read where it lies in the shard's memory map
(the page cache's pages, shared by every process that maps the shard), not copied into the
process: the tables the reader and the compiled core read are views of the map."""

from __future__ import annotations

import numpy as np
import pytest

import fastload

SCHEMAS = {
    "fixed": {"i": "int64", "t": "uint16[4]"},  # the fixed layout: a checksum per record
    "variable": {"i": "int64", "b": "bytes"},  # an entry per record
}


def record(kind: str, i: int) -> dict:
    if kind == "fixed":
        return {"i": i, "t": np.arange(4, dtype=np.uint16) + i}
    return {"i": i, "b": bytes([i % 256]) * (i % 7)}


def span(buffer) -> tuple[int, int]:
    """Where a buffer's bytes lie in memory: [start, end)."""
    a = np.frombuffer(buffer, np.uint8)
    return a.ctypes.data, a.ctypes.data + len(a)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_the_index_is_a_view_of_the_shards_map(tmp_path, kind, compression):
    with fastload.Writer(
        tmp_path / "ds", SCHEMAS[kind], compression=compression, block_size=256, shard_size=1500
    ) as w:
        for i in range(300):
            w.write(record(kind, i))
    with fastload.Dataset(tmp_path / "ds") as ds:
        assert len(ds.shards) > 1
        for s in range(len(ds.shards)):
            reader = ds.shard_reader(s)
            assert (reader.index.record_size is None) == (kind == "variable")
            low, high = span(reader.source.buffer)
            for table in (reader.index.table, reader.index.block_bytes):
                start, end = span(table)
                assert low <= start and end <= high, (kind, s)
        got = ds.get_batch([299, 0, 150])
        assert got["i"].tolist() == [299, 0, 150]
