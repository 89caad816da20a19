"""The convert runner: destinations, source detection, worker failures, results."""

from __future__ import annotations

import json
import os
import signal

import pytest

from fastload import ConvertError, SourceRecordError
from fastload.convert import convert, detect_source
from fastload.convert.base import Source, Task, pack
from fastload.convert.pool import run_in_processes
from fastload.convert.worker import WriteOptions
from fastload.format.schema import Schema

from .conftest import make_imagefolder, read_all


def write_jsonl(path, n: int, start: int = 0) -> None:
    path.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(start, start + n)))


# -- destinations ----------------------------------------------------------------------------
def test_existing_dataset_needs_overwrite_and_is_replaced(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", 50)
    convert(tmp_path / "a.jsonl", tmp_path / "out", progress=False, shard_size=100)
    old_shards = {p.name for p in (tmp_path / "out").glob("*.fls")}
    write_jsonl(tmp_path / "b.jsonl", 3, start=100)
    with pytest.raises(ConvertError, match="already holds a fastload dataset; pass --overwrite"):
        convert(tmp_path / "b.jsonl", tmp_path / "out", progress=False)
    assert [r["i"] for r in read_all(tmp_path / "out")] == list(range(50))  # untouched
    convert(tmp_path / "b.jsonl", tmp_path / "out", progress=False, overwrite=True)
    assert [r["i"] for r in read_all(tmp_path / "out")] == [100, 101, 102]
    assert len(old_shards) > 1 and len(list((tmp_path / "out").glob("*.fls"))) == 1


def test_foreign_files_in_destination_are_never_removed(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", 5)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ConvertError, match="holds files that are not part of a fastload"):
            convert(tmp_path / "a.jsonl", tmp_path / "out", progress=False, overwrite=overwrite)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_leftovers_of_an_interrupted_convert_are_cleared(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", 5)
    out = tmp_path / "out"
    (out / "_parts").mkdir(parents=True)
    (out / "_parts" / "part-00007.json").write_text("{}")
    (out / "shard-00007-0000.fls").write_bytes(b"half a shard")
    (out / "shard-00000-0000.fls.1234abcd.tmp").write_bytes(b"tmp")
    convert(tmp_path / "a.jsonl", out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000-0000.fls"]


def test_failed_convert_leaves_no_manifest_and_no_shards(tmp_path):
    lines = [json.dumps({"i": i}) for i in range(200)]
    lines[150] = "{broken"
    (tmp_path / "a.jsonl").write_text("\n".join(lines))
    with pytest.raises(SourceRecordError, match="a.jsonl line 151: invalid JSON") as info:
        convert(tmp_path / "a.jsonl", tmp_path / "out", progress=False, workers=2, shard_size=200)
    assert any("in a convert worker process" in n for n in info.value.__notes__)
    assert list((tmp_path / "out").iterdir()) == []


def test_result_counts(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", 30)
    result = convert(
        tmp_path / "a.jsonl", tmp_path / "out", progress=True, shard_size=100, workers=2
    )
    assert (result.records, result.skipped, result.source) == (30, 0, "jsonl")
    assert result.input_bytes == (tmp_path / "a.jsonl").stat().st_size
    shard_files = list((tmp_path / "out").glob("*.fls"))
    assert result.shards == len(shard_files) >= result.tasks > 1
    assert result.output_bytes == sum(p.stat().st_size for p in shard_files)
    assert "converted 30 records (jsonl)" in result.summary()


def test_destination_inside_the_input_is_refused(tmp_path):
    make_imagefolder(tmp_path / "in", n=3)
    with pytest.raises(ConvertError, match="is inside the input directory"):
        convert(tmp_path / "in", tmp_path / "in" / "out", progress=False)


def test_fsspec_destination(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", 20)
    # memory:// lives in this process only, so one worker (in-process) writes it.
    result = convert(
        tmp_path / "a.jsonl", "memory://convert-test/ds", progress=False, shard_size=100
    )
    assert result.shards > 1
    assert [r["i"] for r in read_all("memory://convert-test/ds")] == list(range(20))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"workers": 0}, "workers must be a positive integer"),
        ({"compression": "lz4"}, "compression must be one of"),
        ({"level": 99}, "level must be in"),
        ({"shard_size": "lots"}, "not a size"),
        ({"source": "csv"}, "unknown source 'csv'"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, match):
    write_jsonl(tmp_path / "a.jsonl", 3)
    with pytest.raises(ConvertError, match=match):
        convert(tmp_path / "a.jsonl", tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


# -- detection -------------------------------------------------------------------------------
def test_detect_source(tmp_path):
    make_imagefolder(tmp_path / "imgs", n=3)
    assert detect_source(str(tmp_path / "imgs")) == "imagefolder"
    for name, kind in [
        ("a.parquet", "parquet"),
        ("a.feather", "parquet"),
        ("a.jsonl", "jsonl"),
        ("a.jsonl.gz", "jsonl"),
        ("a.tar", "webdataset"),
        ("a.bin", "tokens"),
        ("a.npy", "tokens"),
    ]:
        (tmp_path / name).write_bytes(b"")
        assert detect_source(str(tmp_path / name)) == kind
    assert detect_source(str(tmp_path / "s-{0..3}.tar")) == "webdataset"
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.jsonl").write_text("{}")
    (tmp_path / "mixed" / "b.parquet").write_bytes(b"")
    with pytest.raises(ConvertError, match="ambiguous input, it holds jsonl and parquet"):
        detect_source(str(tmp_path / "mixed"))
    with pytest.raises(ConvertError, match="cannot tell the input format"):
        (tmp_path / "x.csv").write_text("a,b")
        detect_source(str(tmp_path / "x.csv"))
    with pytest.raises(ConvertError, match="no such file"):
        detect_source(str(tmp_path / "missing"))


# -- worker processes ------------------------------------------------------------------------
class _Task(Task):
    pass


class DyingSource(Source):
    """Records ``{"i": i}``; the worker running task ``die_at`` kills itself."""

    name = "dying"

    def __init__(self, n_tasks: int, die_at: int) -> None:
        self.n_tasks, self.die_at = n_tasks, die_at

    def schema(self) -> Schema:
        return Schema({"i": "int64"})

    def tasks(self) -> list[Task]:
        return [_Task(i) for i in range(self.n_tasks)]

    def read(self, task):
        if task.input_bytes == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        yield {"i": task.input_bytes}


def test_a_killed_worker_is_reported_naming_its_task(tmp_path):
    source = DyingSource(4, die_at=2)
    opts = WriteOptions(str(tmp_path / "out"), 1 << 20, 1 << 16, "zstd", 3, None)
    with pytest.raises(
        ConvertError,
        match=r"killed by signal 9 while converting .*_Task\(input_"
        r"bytes=2\)",
    ):
        run_in_processes(source, source.schema(), source.tasks(), opts, False, 2, lambda *a: None)


def test_pack_balances_groups_and_keeps_order():
    assert pack("abcdef", [5, 5, 20, 1, 1, 1], 10) == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert pack(range(10), [10] * 10, 64) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert pack(range(10), [10] * 10, 40) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert pack(range(7), [100] + [1] * 6, 10) == [[0], [1, 2, 3, 4, 5, 6]]
    assert pack("ab", [1, 1], 100) == [["a", "b"]]
    assert pack([], [], 10) == []
