"""``fastload convert`` as a command: arguments, output, errors, and being killed part-way."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import fastload
from fastload.convert.cli import build_parser

from .conftest import cli_command, make_imagefolder

pytestmark = pytest.mark.timeout(120)


def fastload_convert(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cli_command(), "convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=90,
        **kwargs,
    )


def test_help_has_examples_and_every_option():
    out = fastload_convert("--help").stdout
    for text in (
        "examples:",
        "--from",
        "--shard-size",
        "--workers",
        "--skip-bad",
        "--seq-len",
        "--overlap",
        "--decode-check",
        "--storage-options",
        "--no-progress",
    ):
        assert text in out


def test_convert_prints_a_summary(tmp_path):
    make_imagefolder(tmp_path / "in", n=6)
    done = fastload_convert(
        tmp_path / "in", tmp_path / "out", "--workers", "2", "--shard-size", "1KB"
    )
    assert done.returncode == 0, done.stderr
    assert "converted 6 records (imagefolder)" in done.stdout
    # Sizes in one unit system (KiB, MiB: format_size's), in the summary and the progress.
    size = r"[\d.]+ (?:B|KiB|MiB)"
    assert re.search(
        rf"input {size} -> output {size} in .* records/s, {size}/s of input", done.stdout
    )
    assert re.search(rf"convert 100%: {size} of {size}, {size}/s", done.stderr), done.stderr
    assert "\r" not in done.stderr  # stderr is a pipe here: plain lines, no redrawn frames
    assert "0=cat, 1=dog, 2=eel" in done.stderr
    assert len(fastload.Dataset(tmp_path / "out")) == 6


def test_errors_are_one_line_without_traceback(tmp_path):
    done = fastload_convert(tmp_path / "missing", tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.startswith("fastload convert: error: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    done = fastload_convert(tmp_path, tmp_path / "out", "--storage-options", "[1]")
    assert done.returncode == 2 and "must be a JSON object" in done.stderr


def test_skip_bad_logs_a_few_reasons_and_counts_all(tmp_path):
    lines = [json.dumps({"i": i}) if i % 3 else "{bad" for i in range(1, 91)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    done = fastload_convert(tmp_path / "a.jsonl", tmp_path / "out", "--skip-bad", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "skipped 30 bad record(s)" in done.stdout
    assert 1 <= done.stderr.count("skipped: ") <= 10
    assert len(fastload.Dataset(tmp_path / "out")) == 60


def test_parser_in_process(tmp_path, capsys):
    np.arange(300, dtype=np.uint16).tofile(tmp_path / "t.bin")
    args = build_parser().parse_args(
        [
            "convert",
            str(tmp_path / "t.bin"),
            str(tmp_path / "out"),
            "--seq-len",
            "100",
            "--dtype",
            "uint16",
            "--overlap",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    assert "converted 2 records (tokens)" in capsys.readouterr().out


# -- being killed ----------------------------------------------------------------------------
TOKENS, SEQ = 5_000_000, 32
LINES = 300_000
# Token converts run their tasks on threads, JSONL converts on worker processes: both must stop
# cleanly on SIGTERM and leave no manifest when SIGKILLed.
KINDS = ["tokens", "jsonl"]


def start_big_convert(tmp_path: Path, kind: str) -> tuple[subprocess.Popen, Path, list[str]]:
    """A convert that takes a few seconds; returns once it has written a shard."""
    dst = tmp_path / "out"
    if kind == "tokens":
        src = tmp_path / "t.bin"
        if not src.exists():
            (np.arange(TOKENS, dtype=np.int64) % 50000).astype(np.uint16).tofile(src)
        options = ["--dtype", "uint16", "--seq-len", str(SEQ)]
    else:
        src = tmp_path / "big.jsonl"
        if not src.exists():
            src.write_text("".join(f'{{"i": {i}, "text": "{i:040d}"}}\n' for i in range(LINES)))
        options = []
    args = [
        *cli_command(),
        "convert",
        str(src),
        str(dst),
        *options,
        "--workers",
        "2",
        "--shard-size",
        "1MB",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while not list(dst.glob("shard-*.fls")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the convert wrote no shard"
        time.sleep(0.02)
    return proc, dst, args


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += kids - found
            found |= kids
    return found


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
        if not alive:
            return set()
        time.sleep(0.05)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def check_finished_dataset(dst: Path, kind: str) -> None:
    ds = fastload.Dataset(dst)
    n = TOKENS // SEQ if kind == "tokens" else LINES
    assert len(ds) == n
    for i in (0, n // 2, n - 1):
        if kind == "tokens":
            expected = (np.arange(i * SEQ, i * SEQ + SEQ) % 50000).astype(np.uint16)
            np.testing.assert_array_equal(ds[i]["tokens"], expected)
        else:
            assert (ds[i]["i"], ds[i]["text"]) == (i, f"{i:040d}")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["tokens", pytest.param("jsonl", marks=pytest.mark.slow)])
def test_sigkill_leaves_no_manifest_and_rerun_succeeds(tmp_path, kind):
    proc, dst, args = start_big_convert(tmp_path, kind)
    workers = descendants(proc.pid)
    assert bool(workers) == (kind == "jsonl")  # tokens: threads of the one process
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        # Orphaned workers notice that the main process is gone and stop writing.
        assert wait_gone(workers, 10) == set()
    finally:
        with contextlib.suppress(ProcessLookupError):  # in case the assertion failed
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (dst / "manifest.json").exists()
    assert list(dst.glob("shard-*.fls"))  # leftovers, cleared by the rerun
    with pytest.raises(fastload.IncompleteDatasetError):
        fastload.Dataset(dst)
    done = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    check_finished_dataset(dst, kind)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_stops_workers_and_cleans_up(tmp_path, kind):
    proc, dst, _ = start_big_convert(tmp_path, kind)
    workers = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert wait_gone(workers, 10) == set()
    assert list(dst.iterdir()) == []  # no manifest, and the partial shards were removed
