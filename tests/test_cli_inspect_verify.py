"""`fastload inspect` and `fastload verify`: in-process (cmd_inspect/cmd_verify, main) and as
`python -m fastload` subprocesses."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastload.cli import cmd_inspect, cmd_verify
from tests.format.formattools import (
    INDEX_SCHEMA,
    parse_shard,
    write_index_dataset,
    write_manifest,
)

N = 40
HAS_CONVERT_CLI = importlib.util.find_spec("fastload.convert.cli") is not None
needs_full_cli = pytest.mark.skipif(
    not HAS_CONVERT_CLI,
    reason="fastload.cli imports fastload.convert.cli, which is not there yet",
)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_index_dataset(tmp_path_factory.mktemp("cli") / "good", N, shard_size=1000)


def flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """A dataset with one flipped byte in block 1 of shard 1 (zstd) and in block 0 of shard 3;
    returns (path, [(shard path, block, first record, last record)])."""
    path = write_index_dataset(tmp_path_factory.mktemp("cli") / "bad", N, shard_size=1000)
    m = json.loads((path / "manifest.json").read_text())
    damaged = []
    for s, b in ((1, 1), (3, 0)):
        shard = path / m["shards"][s]["path"]
        blk = parse_shard(shard.read_bytes())["blocks"][b]
        flip(shard, blk["offset"] + blk["stored_size"] // 2)
        damaged.append((shard, b, blk["first_record"], blk["first_record"] + blk["n_records"] - 1))
    return path, damaged


def ns(path, **kw) -> argparse.Namespace:
    return argparse.Namespace(
        **{
            "path": str(path),
            "json": False,
            "storage_options": None,
            "no_progress": True,
            "deep": False,
            "follow_symlinks": False,
            **kw,
        }
    )


def check_inspect_text(out: str, path: Path) -> None:
    assert f"dataset      {path}" in out
    assert f"records      {N}" in out
    assert "shards       " in out and "fastload v3" in out and "fingerprint xxh64:" in out
    assert "on disk" in out and "raw (ratio " in out and "compression=zstd" in out
    for name, spec in INDEX_SCHEMA.items():
        assert any(line.split() == [name, spec] for line in out.splitlines()), name
    assert "record 0" in out and "ndarray uint16[3] [0, 0, 3]" in out


def check_inspect_json(out: str, path: Path) -> None:
    info = json.loads(out)
    assert info["path"] == str(path) and info["format_version"] == 3
    assert info["records"] == N and info["shards"] > 1
    m = json.loads((path / "manifest.json").read_text())
    assert info["bytes"] == m["bytes"] and info["shards"] == len(m["shards"])
    assert info["raw_bytes"] == sum(s["raw_bytes"] for s in m["shards"])
    assert info["compression_ratio"] == round(info["raw_bytes"] / info["bytes"], 3)
    assert info["schema"] == INDEX_SCHEMA and info["options"]["compression"] == "zstd"
    assert list(info["sample"]) == list(INDEX_SCHEMA) and info["sample"]["i"] == "0"


def check_verify_bad(out: str, damaged) -> None:
    lines = [line for line in out.splitlines() if line.startswith("CORRUPT ")]
    assert len(lines) == len(damaged), out
    for line, (shard, block, first, last) in zip(lines, damaged):
        assert line.startswith(f"CORRUPT {shard}: block {block} (byte offset "), line
        assert f"records {first}..{last}" in line and "failed its checksum" in line, line


# --------------------------------------------------------------------------- in-process


def test_cmd_inspect_text(good, capsys):
    assert cmd_inspect(ns(good)) == 0
    check_inspect_text(capsys.readouterr().out, good)


def test_cmd_inspect_json(good, capsys):
    assert cmd_inspect(ns(good, json=True)) == 0
    check_inspect_json(capsys.readouterr().out, good)


def test_cmd_inspect_empty_dataset(tmp_path, capsys):
    import fastload

    with fastload.Writer(tmp_path / "e", {"i": "int64"}):
        pass
    assert cmd_inspect(ns(tmp_path / "e")) == 0
    out = capsys.readouterr().out
    assert "records      0" in out and "record 0" not in out
    assert cmd_inspect(ns(tmp_path / "e", json=True)) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["records"] == 0 and info["sample"] is None


def test_cmd_verify_good(good, capsys):
    assert cmd_verify(ns(good)) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and f"{N} records" in out and "CORRUPT" not in out


def test_cmd_verify_bad_names_shard_block_and_records(bad, capsys):
    path, damaged = bad
    assert cmd_verify(ns(path)) == 1
    captured = capsys.readouterr()
    check_verify_bad(captured.out, damaged)
    assert f"FAILED: 2 problem(s) in {path}" in captured.err


@needs_full_cli
def test_main_reports_fastload_errors_with_exit_1(tmp_path, capsys):
    from fastload.cli import main

    (tmp_path / "incomplete").mkdir()
    for cmd in ("inspect", "verify"):
        assert main([cmd, str(tmp_path / "incomplete")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"fastload {cmd}: error: ")
        assert str(tmp_path / "incomplete" / "manifest.json") in err and "interrupted" in err


@needs_full_cli
def test_main_verify_reports_a_missing_shard(good, tmp_path, capsys):
    import shutil

    from fastload.cli import main

    ds = Path(shutil.copytree(good, tmp_path / "ds"))
    (ds / "shard-00001.fls").unlink()
    assert main(["verify", "--no-progress", str(ds)]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT {ds / 'shard-00001.fls'}: shard listed in the manifest does not exist" in out


@needs_full_cli
@pytest.mark.parametrize("argv", [["--help"], ["inspect", "--help"], ["verify", "--help"]])
def test_main_help(argv, capsys):
    from fastload.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastload")
    if argv[0] == "--help":
        assert "inspect" in out and "verify" in out and "convert" in out
    else:
        assert "path" in out and "--storage-options" in out
        assert ("--json" in out) == (argv[0] == "inspect")
        assert ("--no-progress" in out) == (argv[0] == "verify")


# --------------------------------------------------------------------------- subprocess


def fastload_cmd(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "fastload", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@needs_full_cli
def test_subprocess_inspect(good):
    r = fastload_cmd("inspect", str(good))
    assert r.returncode == 0, r.stderr
    check_inspect_text(r.stdout, good)
    r = fastload_cmd("inspect", "--json", str(good))
    assert r.returncode == 0, r.stderr
    check_inspect_json(r.stdout, good)


@needs_full_cli
def test_subprocess_verify(good, bad):
    r = fastload_cmd("verify", "--no-progress", str(good))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK: ")
    path, damaged = bad
    r = fastload_cmd("verify", str(path))
    assert r.returncode == 1
    check_verify_bad(r.stdout, damaged)
    assert "FAILED: 2 problem(s)" in r.stderr


@needs_full_cli
def test_subprocess_help():
    for args in (["--help"], ["inspect", "--help"], ["verify", "--help"]):
        r = fastload_cmd(*args)
        assert r.returncode == 0 and r.stdout.startswith("usage: fastload"), (args, r.stderr)
    r = fastload_cmd("inspect", "/nonexistent/dataset")
    assert r.returncode == 1 and "no such dataset" in r.stderr


@needs_full_cli
def test_subprocess_control_characters_in_a_shard_path_print_no_traceback(good, tmp_path):
    ds = Path(shutil.copytree(good, tmp_path / "ds"))
    m = json.loads((ds / "manifest.json").read_text())
    m["shards"][0]["path"] = "shard-\x0000.fls"
    write_manifest(ds, m)
    for command in ("inspect", "verify"):
        r = fastload_cmd(command, str(ds))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"{ds / 'manifest.json'}: shard entry 0: path 'shard-\\x0000.fls'" in r.stderr


@needs_full_cli
def test_subprocess_verify_deep_and_a_version_1_warning(good):
    r = fastload_cmd("verify", "--deep", "--no-progress", str(good))
    assert r.returncode == 0 and "every record decodes" in r.stdout, r.stderr
    v1 = Path(__file__).parent / "format" / "data" / "v1"
    r = subprocess.run(
        [sys.executable, "-m", "fastload", "verify", "--no-progress", str(v1)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith("OK: ")
    warning = f"fastload verify: warning: {v1 / 'manifest.json'}: this dataset is format version 1"
    assert r.stderr.count(warning) == 1, r.stderr
