"""The parquet source: type mapping, row-group tasks, nulls, unsupported types, Arrow IPC."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from fastload import ConvertError, SourceRecordError
from fastload.convert import convert
from fastload.convert.parquet import ParquetSource

from .conftest import dir_bytes, jpeg_bytes, read_all


def table(start: int, n: int) -> pa.Table:
    """Rows ``start..start+n-1``; every column derives from the row index."""
    idx = np.arange(start, start + n)
    return pa.table(
        {
            "idx": pa.array(idx, pa.int64()),
            "small": pa.array(idx % 100, pa.uint8()),
            "f32": pa.array(idx / 4, pa.float32()),
            "flag": pa.array(idx % 2 == 0),
            "name": pa.array([f"row-{i}" for i in idx]),
            "blob": pa.array([bytes([i % 256]) * (i % 5) for i in idx], pa.binary()),
            "image": pa.array([jpeg_bytes(int(i)) for i in idx], pa.large_binary()),
            "vec": pa.array([[i, i + 1, i + 2] for i in idx], pa.list_(pa.float32(), 3)),
            "grid": pa.array([[[i, 0], [0, i]] for i in idx], pa.list_(pa.list_(pa.int16(), 2), 2)),
            "var": pa.array([list(range(i % 4)) for i in idx], pa.list_(pa.int32())),
            "meta": pa.array([{"i": int(i), "tags": ["a"] * (i % 3)} for i in idx]),
            "kv": pa.array([[("k", int(i))] for i in idx], pa.map_(pa.string(), pa.int64())),
            "cat": pa.array([f"c{i % 3}" for i in idx]).dictionary_encode(),
        }
    )


EXPECTED_SCHEMA = {
    "idx": "int64",
    "small": "uint8",
    "f32": "float32",
    "flag": "bool",
    "name": "str",
    "blob": "bytes",
    "image": "image",  # binary whose sampled values are all JPEGs
    "vec": "float32[3]",
    "grid": "int16[2,2]",
    "var": "int32[?]",
    "meta": "json",
    "kv": "json",
    "cat": "str",
}


def check_row(r: dict, i: int) -> None:
    assert r["idx"] == i and r["small"] == i % 100 and r["flag"] == (i % 2 == 0)
    assert r["f32"] == pytest.approx(i / 4)
    assert r["name"] == f"row-{i}" and r["blob"] == bytes([i % 256]) * (i % 5)
    assert r["image"].data == jpeg_bytes(i) and r["image"].format == "jpeg"
    assert r["vec"].tolist() == [i, i + 1, i + 2] and r["vec"].dtype == np.float32
    assert r["grid"].tolist() == [[i, 0], [0, i]]
    assert r["var"].tolist() == list(range(i % 4)) and r["var"].dtype == np.int32
    assert r["meta"] == {"i": i, "tags": ["a"] * (i % 3)}
    assert r["kv"] == {"k": i} and r["cat"] == f"c{i % 3}"


def test_directory_round_trip(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    pq.write_table(table(0, 25), tmp_path / "in" / "a.parquet", row_group_size=7)
    pq.write_table(table(25, 10), tmp_path / "in" / "sub" / "b.parquet", row_group_size=4)
    source = ParquetSource(str(tmp_path / "in"), shard_size=1 << 20)
    assert source.schema().to_dict() == EXPECTED_SCHEMA
    result = convert(tmp_path / "in", tmp_path / "out", progress=False, shard_size=3000)
    assert result.records == 35 and result.tasks > 2
    rows = read_all(tmp_path / "out")
    for i, r in enumerate(rows):
        check_row(r, i)


def test_workers_give_identical_output(tmp_path):
    pq.write_table(table(0, 40), tmp_path / "t.parquet", row_group_size=5)
    for w in (1, 2):
        convert(
            tmp_path / "t.parquet", tmp_path / f"o{w}", workers=w, shard_size=2500, progress=False
        )
    assert len(dir_bytes(tmp_path / "o1")) > 3
    assert dir_bytes(tmp_path / "o1") == dir_bytes(tmp_path / "o2")


def test_arrow_ipc_file_and_stream(tmp_path):
    t = table(0, 12)
    feather.write_feather(t, tmp_path / "t.feather", chunksize=5)
    with pa.ipc.new_stream(tmp_path / "s.arrow", t.schema) as w:  # the Hugging Face layout
        for batch in t.to_batches(max_chunksize=4):
            w.write_batch(batch)
    for name in ("t.feather", "s.arrow"):
        convert(tmp_path / name, tmp_path / f"out-{name}", progress=False, shard_size=2000)
        for i, r in enumerate(read_all(tmp_path / f"out-{name}")):
            check_row(r, i)


def test_nulls_are_bad_records_naming_row_and_column(tmp_path):
    t = pa.table(
        {
            "a": pa.array([1, 2, None, 4, 5]),
            "v": pa.array([[1], [2], [3], [None], [5]], pa.list_(pa.int64())),
        }
    )
    pq.write_table(t, tmp_path / "n.parquet", row_group_size=2)
    with pytest.raises(SourceRecordError, match=r"n.parquet: row 2: column 'a' is null"):
        convert(tmp_path / "n.parquet", tmp_path / "out", progress=False)
    result = convert(tmp_path / "n.parquet", tmp_path / "out", progress=False, skip_bad=True)
    assert result.skipped == 2
    assert any("row 3: column 'v'" in e for e in result.skip_examples)
    assert [r["a"] for r in read_all(tmp_path / "out")] == [1, 2, 5]


@pytest.mark.parametrize(
    "column",
    [
        pa.array([datetime.datetime(2020, 1, 1)]),
        pa.array([{"raw": b"x"}]),  # bytes cannot go into json
    ],
)
def test_unsupported_types_name_the_column(tmp_path, column):
    pq.write_table(pa.table({"ok": [1], "bad": column}), tmp_path / "u.parquet")
    with pytest.raises(ConvertError, match=r"column 'bad' has Arrow type .* cast it"):
        convert(tmp_path / "u.parquet", tmp_path / "out", progress=False)


def test_files_with_different_columns_are_rejected(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"a": [1]}), tmp_path / "in" / "1.parquet")
    pq.write_table(pa.table({"a": ["x"]}), tmp_path / "in" / "2.parquet")
    with pytest.raises(ConvertError, match="2.parquet: its columns"):
        convert(tmp_path / "in", tmp_path / "out", progress=False)


def test_invalid_column_name_is_an_error(tmp_path):
    pq.write_table(pa.table({"my col": [1]}), tmp_path / "c.parquet")
    with pytest.raises(ConvertError, match="'my col' cannot be a field name"):
        convert(tmp_path / "c.parquet", tmp_path / "out", progress=False)


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ConvertError, match="cannot read as Parquet"):
        convert(tmp_path / "x.parquet", tmp_path / "out", progress=False)
