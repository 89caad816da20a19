"""``fastload.convert`` at the top level: the function the CLI calls, with the CLI's defaults."""

from __future__ import annotations

import json
import subprocess

import pytest

import fastload
from fastload.convert.cli import build_parser
from fastload.convert.runner import default_workers

from .conftest import cli_command, dir_bytes

pytestmark = pytest.mark.timeout(120)


def write_jsonl(path, n: int = 400):
    path.write_text("".join(json.dumps({"i": i, "s": "x" * (i % 30)}) + "\n" for i in range(n)))
    return path


def test_top_level_convert_calls_the_runner_and_its_modules_still_import(tmp_path):
    import inspect

    import fastload.convert.parquet as parquet_module
    from fastload.convert.runner import convert

    src = write_jsonl(tmp_path / "in.jsonl", n=10)
    got = fastload.convert(src, tmp_path / "out", workers=1, progress=False)
    assert got.records == 10 and got.dst == str(tmp_path / "out")
    assert inspect.signature(fastload.convert) == inspect.signature(convert)
    assert "convert" in fastload.__all__
    assert fastload.convert.convert is convert
    assert fastload.convert.parquet is parquet_module


def test_the_function_and_the_command_use_the_same_number_of_workers(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl")
    # Many small tasks, so the worker count is not capped by the number of tasks.
    got = fastload.convert(src, tmp_path / "api", shard_size="1KB", progress=False)
    assert got.workers == default_workers()
    done = subprocess.run(
        [*cli_command(), "convert", src, tmp_path / "cli", "--shard-size", "1KB", "--json"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["workers"] == got.workers
    assert dir_bytes(tmp_path / "api") == dir_bytes(tmp_path / "cli")


def test_the_cli_defaults_are_the_functions_defaults():
    import inspect

    args = build_parser().parse_args(["convert", "a", "b"])
    params = inspect.signature(fastload.convert).parameters
    assert args.workers is None and params["workers"].default is None
    assert fastload.utils.parse_size(args.shard_size) == params["shard_size"].default
    assert fastload.utils.parse_size(args.block_size) == params["block_size"].default
    for name in ("compression", "level", "overwrite", "skip_bad"):
        assert getattr(args, name) == params[name].default, name
    assert (not args.no_progress) == params["progress"].default
