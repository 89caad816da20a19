"""Progress a person can read: every source reports input bytes while a task runs (not only
when it ends), the display redraws in place only on a terminal and prints plain lines
elsewhere, and sizes are in one unit system."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fastload.convert.worker as worker
from fastload.convert import open_source
from fastload.convert.progress import Progress
from fastload.convert.worker import WriteOptions, run_task

from .conftest import jpeg_bytes, make_imagefolder

pytestmark = pytest.mark.timeout(120)


def make_input(kind: str, root):
    """An input of one kind that makes one task of many records; ``(src, options)``."""
    if kind == "parquet":
        root.mkdir()
        for k in range(3):
            idx = np.arange(k * 100, (k + 1) * 100)
            pq.write_table(pa.table({"i": idx, "s": [f"{i:040d}" for i in idx]}), root / f"{k}.pq")
        return root, {}
    if kind == "imagefolder":
        make_imagefolder(root, n=40)
        return root, {}
    if kind == "jsonl":
        path = root.with_suffix(".jsonl")
        path.write_text("".join(json.dumps({"i": i, "s": "x" * 500}) + "\n" for i in range(6000)))
        return path, {}
    if kind == "webdataset":
        path = root.with_suffix(".tar")
        with tarfile.open(path, "w") as tf:
            for i in range(30):
                data = jpeg_bytes(i)
                info = tarfile.TarInfo(f"{i:04d}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return path, {}
    path = root.with_suffix(".npy")
    np.save(path, np.arange(80_000, dtype=np.uint16))
    return path, {"seq_len": 4}  # 20,000 samples: several chunks of rows


@pytest.mark.parametrize("kind", ["parquet", "imagefolder", "jsonl", "webdataset", "tokens"])
def test_every_source_reports_bytes_while_its_task_runs(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(worker, "_REPORT_SECONDS", 0.0)  # report at every chance
    src, options = make_input(kind, tmp_path / "in")
    source = open_source(str(src), shard_size=1 << 30, **options)
    tasks = source.tasks()
    assert len(tasks) == 1
    events = []
    opts = WriteOptions(str(tmp_path / "out"), 1 << 30, 1 << 20, "zstd", 3, None)
    result = run_task(
        source, source.schema(), 0, tasks[0], opts, False, lambda *e: events.append(e)
    )
    moves = [value for event, value in events if event == "progress"]
    assert sum(m[0] for m in moves) == result.records > 0
    assert sum(m[2] for m in moves) == tasks[0].input_bytes  # the bar ends where the task does
    # The bar moved part of the way while records were still to come.
    first = next(k for k, m in enumerate(moves) if m[2] > 0)
    assert moves[first][2] < tasks[0].input_bytes, moves
    assert sum(m[0] for m in moves[first + 1 :]) > 0, moves


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    bar = Progress(3 << 20, 2, enabled=True, file=out, line_seconds=0.0)
    with bar.active():
        bar.on_event("progress", (10, 0, 1 << 20))
        bar.on_event("progress", (10, 1, 1 << 20))
        bar.on_event("done", None)
        bar.on_event("progress", (5, 0, 1 << 20))
        bar.on_event("done", None)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("convert  33%: 1.0 MiB of 3.0 MiB, ")
    assert "20 records" in lines[1] and "1 skipped" in lines[1]
    assert lines[-1].startswith("convert 100%: 3.0 MiB of 3.0 MiB, ") and "tasks 2/2" in lines[-1]


def test_plain_lines_are_rate_limited():
    out = io.StringIO()
    bar = Progress(100, 1, enabled=True, file=out, line_seconds=3600.0)
    with bar.active():
        for _ in range(50):
            bar.on_event("progress", (1, 0, 2))
        bar.on_event("done", None)
    assert len(out.getvalue().splitlines()) == 1  # only the last: none was due before it


def read_until(fd: int, text: str, timeout: float = 10.0) -> str:
    """What a pseudo-terminal's other end shows, read until ``text`` is in it (the kernel
    passes writes on to it asynchronously, so one read may not hold them all)."""
    import select
    import time

    got, deadline = "", time.monotonic() + timeout
    while text not in got and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            got += os.read(fd, 65536).decode()
    return got


def test_a_terminal_gets_a_bar_that_moves_before_a_task_ends():
    import fcntl
    import struct
    import termios

    main, secondary = os.openpty()
    # A new pseudo-terminal is 0 columns wide; a real one is not.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    with os.fdopen(secondary, "w") as tty:
        bar = Progress(4 << 20, 1, enabled=True, file=tty)
        with bar.active():
            bar.on_event("progress", (7, 0, 1 << 20))  # a task a quarter read, not done
            bar._draw(0, force=True)
            tty.flush()
            text = read_until(main, "records")
    os.close(main)
    assert "\r" in text  # redrawn in place
    assert re.search(r"convert\s+25%\|", text), text
    assert "1.0 MiB of 4.0 MiB" in text and "7 records" in text


def test_disabled_prints_nothing():
    out = io.StringIO()
    bar = Progress(10, 1, enabled=False, file=out, line_seconds=0.0)
    with bar.active():
        bar.on_event("progress", (1, 0, 10))
        bar.on_event("done", None)
    assert out.getvalue() == ""
