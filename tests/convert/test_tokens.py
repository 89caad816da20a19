"""The tokens source: fixed-length samples, overlap, dropped tail, dtypes, odd sizes."""

from __future__ import annotations

import numpy as np
import pytest

from fastload import ConvertError, Dataset
from fastload.convert import convert
from fastload.convert.tokens import TokensSource

from .conftest import dir_bytes, read_all


def tokens(n: int, dtype=np.uint16) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) * 7 % 60001).astype(dtype)


@pytest.mark.parametrize("overlap", [False, True])
def test_bin_round_trip(tmp_path, overlap):
    t = tokens(1000)
    t.tofile(tmp_path / "t.bin")
    result = convert(
        tmp_path / "t.bin",
        tmp_path / "out",
        progress=False,
        seq_len=64,
        dtype="uint16",
        overlap=overlap,
        shard_size=500,
    )
    n = (1000 - overlap) // 64
    assert result.records == n and result.tasks > 3
    dropped = 1000 - n * 64 - overlap
    assert f"{dropped} trailing token(s) dropped" in result.notes[0]
    records = read_all(tmp_path / "out")
    for i, r in enumerate(records):
        assert r["tokens"].dtype == np.uint16
        np.testing.assert_array_equal(r["tokens"], t[i * 64 : i * 64 + 64 + overlap])
    if overlap:  # consecutive samples share one token: inputs and next-token targets
        assert records[0]["tokens"][-1] == records[1]["tokens"][0]


def test_npy_uint32_and_schema(tmp_path):
    t = tokens(500, np.uint32) + 70000
    np.save(tmp_path / "t.npy", t)
    source = TokensSource(str(tmp_path / "t.npy"), shard_size=1 << 20, seq_len=100, overlap=True)
    assert source.schema().to_dict() == {"tokens": "uint32[101]"}
    convert(tmp_path / "t.npy", tmp_path / "out", progress=False, seq_len=100, overlap=True)
    records = read_all(tmp_path / "out")
    assert len(records) == 4
    np.testing.assert_array_equal(records[3]["tokens"], t[300:401])


def test_big_endian_npy(tmp_path):
    t = tokens(300).astype(">u2")
    np.save(tmp_path / "t.npy", t)
    convert(tmp_path / "t.npy", tmp_path / "out", progress=False, seq_len=100)
    np.testing.assert_array_equal(read_all(tmp_path / "out")[2]["tokens"], t[200:300])


def test_workers_give_identical_output(tmp_path):
    tokens(5000).tofile(tmp_path / "t.bin")
    for w in (1, 2):
        convert(
            tmp_path / "t.bin",
            tmp_path / f"o{w}",
            workers=w,
            progress=False,
            seq_len=50,
            dtype="uint16",
            shard_size="1KB",
        )
    assert len(dir_bytes(tmp_path / "o1")) > 5
    assert dir_bytes(tmp_path / "o1") == dir_bytes(tmp_path / "o2")


def test_directory_of_token_files(tmp_path):
    (tmp_path / "in").mkdir()
    tokens(250).tofile(tmp_path / "in" / "a.bin")
    tokens(130).tofile(tmp_path / "in" / "b.bin")
    result = convert(tmp_path / "in", tmp_path / "out", progress=False, seq_len=100, dtype="uint16")
    assert result.records == 3  # 2 from a, 1 from b: samples never span files


def test_odd_sizes_and_missing_options(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x01" * 101)
    with pytest.raises(ConvertError, match="101 bytes is not a whole number of uint16 tokens"):
        convert(tmp_path / "odd.bin", tmp_path / "out", progress=False, seq_len=10, dtype="uint16")
    tokens(10).tofile(tmp_path / "t.bin")
    with pytest.raises(ConvertError, match="needs its dtype"):
        convert(tmp_path / "t.bin", tmp_path / "out", progress=False, seq_len=4)
    with pytest.raises(ConvertError, match="seq_len .* must be a positive integer"):
        convert(tmp_path / "t.bin", tmp_path / "out", progress=False, dtype="uint16")
    with pytest.raises(ConvertError, match="fewer than 11 tokens"):
        convert(
            tmp_path / "t.bin",
            tmp_path / "out",
            progress=False,
            dtype="uint16",
            seq_len=10,
            overlap=True,
        )
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ConvertError, match="fewer than"):
        convert(tmp_path / "empty.bin", tmp_path / "out", progress=False, dtype="uint16", seq_len=4)
    np.save(tmp_path / "f.npy", np.zeros(10, np.float32))
    with pytest.raises(ConvertError, match="token files hold integers"):
        convert(tmp_path / "f.npy", tmp_path / "out", progress=False, seq_len=4)
    with pytest.raises(ConvertError, match="does not take decode_check"):
        convert(
            tmp_path / "t.bin",
            tmp_path / "out",
            progress=False,
            dtype="uint16",
            seq_len=4,
            decode_check=True,
        )


@pytest.mark.parametrize("seq_len", [33, 64])  # odd byte sizes are padded in the record
def test_column_fast_path_gives_the_records_of_the_row_path(tmp_path, monkeypatch, seq_len):
    tokens(999).tofile(tmp_path / "t.bin")
    options = dict(progress=False, seq_len=seq_len, dtype="uint16", overlap=True, shard_size=900)
    convert(tmp_path / "t.bin", tmp_path / "fast", **options)
    monkeypatch.setattr(TokensSource, "read_columns", lambda self, task: None)
    convert(tmp_path / "t.bin", tmp_path / "slow", **options)
    fast, slow = Dataset(str(tmp_path / "fast")), Dataset(str(tmp_path / "slow"))
    assert len(fast.shards) > 2
    assert len(fast) == len(slow) == (999 - 1) // seq_len
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_big_endian_npy_reads_as_native_values(tmp_path):
    np.save(tmp_path / "t.npy", tokens(300).astype(">u2"))
    convert(tmp_path / "t.npy", tmp_path / "out", progress=False, seq_len=100)
    ds = Dataset(str(tmp_path / "out"))
    assert [r["tokens"].tolist() for r in ds] == [
        tokens(300)[i : i + 100].tolist() for i in (0, 100, 200)
    ]


def test_a_file_that_shrinks_mid_convert_fails_naming_it_and_stops_the_threads(tmp_path):
    # Token tasks run on threads (their work releases the GIL); a failure in one must stop the
    # convert with the error naming the file, never read past the end of a shorter file.
    from fastload.convert.threads import run_in_threads
    from fastload.convert.worker import WriteOptions

    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c"):
        tokens(3000).tofile(src / f"{name}.bin")
    source = TokensSource(str(src), shard_size=1000, seq_len=50, dtype="uint16")
    tasks = source.tasks()
    (src / "b.bin").write_bytes(tokens(100).tobytes())  # changed after the tasks were cut
    opts = WriteOptions(str(tmp_path / "out"), 1000, 500, "zstd", 3, None)
    events = []
    with pytest.raises(ConvertError, match=r"b\.bin: changed size during the convert"):
        run_in_threads(
            source, source.schema(), tasks, opts, False, 2, lambda kind, value: events.append(kind)
        )
    assert "error" not in events  # errors are raised, not reported as progress
    import threading

    assert not [t for t in threading.enumerate() if t.name.startswith("fastload-convert")]
