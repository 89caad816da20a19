"""convert on a Ray cluster (a local one of 2 CPUs, on loopback): the same bytes as on one
machine, a bad record named with nothing left behind, skips counted, a worker that dies
past Ray's retries named, the CLI's --ray, and Ctrl-C / SIGTERM leaving nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from fastload.convert import convert
from fastload.convert.cluster import run_on_ray
from fastload.convert.worker import WriteOptions
from fastload.errors import ConvertError, SourceRecordError

from .conftest import cli_command, dir_bytes, make_imagefolder
from .test_runner import DyingSource

# slow: the module's Ray cluster alone takes ~5 s to start
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]


def write_jsonl(path, n: int = 3000, bad: int | None = None):
    with open(path, "w") as f:
        for i in range(n):
            record = {"i": i, "text": "x" * (i % 50), "v": [i, i + 1]}
            if i == bad:
                record["i"] = "not a number"
            f.write(json.dumps(record) + "\n")
    return path


@pytest.mark.parametrize("kind", ["jsonl", "imagefolder", "tokens"])
def test_the_same_bytes_as_on_one_machine(ray_cluster, tmp_path, kind):
    if kind == "jsonl":
        src, kw = write_jsonl(tmp_path / "in.jsonl"), {}
    elif kind == "imagefolder":
        make_imagefolder(tmp_path / "in", n=60)
        src, kw = tmp_path / "in", {}
    else:
        import numpy as np

        src = tmp_path / "t.npy"
        np.save(src, np.arange(40_000, dtype=np.uint16))
        kw = {"seq_len": 100}
    common = dict(shard_size="8KB", progress=False, **kw)
    on_ray = convert(src, tmp_path / "ray", ray=True, **common)
    local = convert(src, tmp_path / "one", workers=1, **common)
    assert on_ray.tasks > 2 and on_ray.records == local.records > 0
    assert dir_bytes(tmp_path / "ray") == dir_bytes(tmp_path / "one")


def test_a_bad_record_is_named_and_nothing_is_left(ray_cluster, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", bad=2500)
    with pytest.raises(SourceRecordError, match="in.jsonl.*line 2501"):
        convert(src, tmp_path / "out", ray=True, shard_size="8KB", progress=False)
    assert not list((tmp_path / "out").rglob("*"))  # no manifest, no part, no shard


def test_skipped_records_are_counted(ray_cluster, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", bad=2500)  # past the lines the schema is from
    got = convert(src, tmp_path / "ray", ray=True, shard_size="8KB", skip_bad=True, progress=False)
    assert got.skipped == 1 and got.records == 2999
    assert "line 2501" in got.skip_examples[0]
    convert(src, tmp_path / "one", shard_size="8KB", skip_bad=True, progress=False)
    assert dir_bytes(tmp_path / "ray") == dir_bytes(tmp_path / "one")


def test_a_task_whose_worker_always_dies_is_named(ray_cluster, tmp_path):
    """Ray runs it again (a node may have gone away); past the retries it is a ConvertError
    naming the task, and the tasks still running are cancelled."""
    # Ray's workers cannot import the tests: the source travels by value.
    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[DyingSource.__module__])
    source = DyingSource(4, die_at=2)
    opts = WriteOptions(str(tmp_path / "out"), 1 << 20, 1 << 16, "zstd", 3, None)
    with pytest.raises(
        ConvertError,
        match=r"Ray could not run the convert task for .*_Task\(inp"
        r"ut_bytes=2\): WorkerCrashedError",
    ):
        run_on_ray(source, source.schema(), source.tasks(), opts, False, lambda *a: None)


def test_the_cli_starts_a_local_cluster(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", n=500)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # loopback only
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [
            *cli_command(),
            "convert",
            str(src),
            str(tmp_path / "ray"),
            "--ray",
            "--shard-size",
            "4KB",
            "--no-progress",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["records"] == 500
    convert(src, tmp_path / "one", shard_size="4KB", progress=False)
    assert dir_bytes(tmp_path / "ray") == dir_bytes(tmp_path / "one")
    assert (
        "--ray"
        in subprocess.run(
            [*cli_command(), "convert", "--help"], capture_output=True, text=True, timeout=60
        ).stdout
    )


def _processes_mentioning(text: str) -> list[int]:
    """Processes whose command line holds ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_stops_it_and_leaves_nothing(tmp_path, sig, status):
    """Signalled while its tasks write: exit 130 / 143, nothing at DST, and the cluster it
    started gone with its processes (found by the temporary directory they were given)."""
    src = write_jsonl(tmp_path / "in.jsonl", n=300_000)
    dst = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="flray-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    # SIGINT as a terminal delivers it: a shell running the tests in the background may
    # have them ignore it, and Python then keeps ignoring it.
    command = [
        sys.executable,
        "-c",
        "import runpy, signal; signal.signal(signal.SIGINT, "
        "signal.default_int_handler); runpy.run_module('fastload', run_name='__main__')",
    ]
    proc = subprocess.Popen(
        [*command, "convert", str(src), str(dst), "--ray", "--shard-size", "16KB", "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (dst.exists() and any(dst.rglob("*"))):  # its tasks have begun to write
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, err
    assert not list(dst.rglob("*"))
    deadline = time.monotonic() + 60
    while _processes_mentioning(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _processes_mentioning(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_an_unreachable_cluster_is_a_clear_error(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", n=50)
    code = (
        "import fastload, sys\n"
        "try:\n"
        f"    fastload.convert({str(src)!r}, {str(tmp_path / 'out')!r}, "
        "ray='127.0.0.1:9', progress=False)\n"
        "except fastload.errors.ConvertError as e:\n"
        "    print('ConvertError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert "ConvertError: could not join a Ray cluster at '127.0.0.1:9'" in out.stdout, out.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))
