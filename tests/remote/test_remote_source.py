"""Converting *from* S3 (moto) and GCS (the emulator) on loopback: every ``--from`` kind gives
the bytes a local convert gives, globs and brace patterns list the bucket, Parquet is read by
ranged GETs of its row groups (never whole), transient faults are retried, an unreachable
endpoint or a missing input is one line naming the URL, SRC and DST take their own storage
options, and the same works on a Ray cluster."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fastload
from fastload.errors import ConvertError, FastloadError
from tests.convert.conftest import dir_bytes, jpeg_bytes, make_imagefolder

pytestmark = [pytest.mark.remote, pytest.mark.slow, pytest.mark.timeout(240)]

KINDS = ["parquet", "imagefolder", "jsonl", "webdataset", "tokens"]


def make_input(kind: str, root: Path) -> tuple[str, dict]:
    """A local input of ``kind`` under ``root`` (many tasks at the tests' shard size);
    ``(path relative to root, convert options)``."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        (root / "data").mkdir()
        for k in range(3):
            idx = np.arange(k * 200, (k + 1) * 200)
            t = pa.table(
                {"i": idx, "s": [f"{i:050d}" for i in idx], "v": [[float(i), 1.5] for i in idx]}
            )
            pq.write_table(t, root / "data" / f"part-{k}.parquet", row_group_size=50)
        return "data", {}
    if kind == "imagefolder":
        make_imagefolder(root / "images", n=30)
        return "images", {}
    if kind == "jsonl":
        (root / "docs").mkdir()
        for k in range(2):
            lines = [
                json.dumps({"i": i, "t": "x" * (i % 40)}) for i in range(k * 500, k * 500 + 500)
            ]
            (root / "docs" / f"{k}.jsonl").write_text("\n".join(lines) + "\n")
        return "docs", {}
    if kind == "webdataset":
        (root / "wds").mkdir()
        for k in range(4):
            with tarfile.open(root / "wds" / f"shard-{k:03d}.tar", "w") as tf:
                for i in range(k * 5, k * 5 + 5):
                    for ext, data in (("jpg", jpeg_bytes(i)), ("cls", str(i % 3).encode())):
                        info = tarfile.TarInfo(f"{i:05d}.{ext}")
                        info.size = len(data)
                        tf.addfile(info, io.BytesIO(data))
        return "wds/shard-{000..003}.tar", {}
    (root / "tok").mkdir()
    np.save(root / "tok" / "a.npy", np.arange(30_000, dtype=np.uint16))
    (root / "tok" / "b.bin").write_bytes(np.arange(9_000, dtype=np.uint16).tobytes())
    return "tok", {"seq_len": 64, "dtype": "uint16"}


def upload(server, local: Path) -> str:
    """``local``'s files into a new bucket; the bucket's URL."""
    bucket = server.new_bucket()
    fs = server.fs()
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{bucket}/{p.relative_to(local).as_posix()}", p.read_bytes())
    return bucket


COMMON = {"shard_size": "4KB", "block_size": "1KB", "progress": False}


@pytest.mark.parametrize("server_kind", ["s3", "gcs"])
@pytest.mark.parametrize("kind", KINDS)
def test_remote_source_gives_the_bytes_of_a_local_one(kind, server_kind, request, tmp_path):
    server = request.getfixturevalue(f"{server_kind}_server")
    rel, options = make_input(kind, tmp_path / "in")
    bucket = upload(server, tmp_path / "in")
    local = fastload.convert(tmp_path / "in" / rel, tmp_path / "local", **COMMON, **options)
    remote = fastload.convert(
        f"{bucket}/{rel}",
        tmp_path / "remote",
        storage_options=server.storage_options,
        **COMMON,
        **options,
    )
    assert remote.tasks == local.tasks > 1 and remote.records == local.records > 0
    assert remote.source == local.source == kind
    assert dir_bytes(tmp_path / "remote") == dir_bytes(tmp_path / "local")


def test_globs_and_braces_list_the_bucket(s3_server, tmp_path):
    rel, _ = make_input("parquet", tmp_path / "in")
    bucket = upload(s3_server, tmp_path / "in")
    opts = {"storage_options": s3_server.storage_options, **COMMON}
    glob = fastload.convert(f"{bucket}/data/part-*.parquet", tmp_path / "glob", **opts)
    braces = fastload.convert(f"{bucket}/data/part-{{2,0}}.parquet", tmp_path / "braces", **opts)
    assert glob.records == 600 and braces.records == 400
    assert [r["i"] for r in fastload.Dataset(tmp_path / "braces")][:3] == [400, 401, 402]
    with pytest.raises(ConvertError, match=r"1 of 3 files do not exist, e.g. .*part-7\.parquet"):
        fastload.convert(f"{bucket}/data/part-{{0,1,7}}.parquet", tmp_path / "hole", **opts)
    with pytest.raises(ConvertError, match="no file matches"):
        fastload.convert(f"{bucket}/data/nothing-*.parquet", tmp_path / "none", **opts)


def test_parquet_row_groups_are_ranged_reads_never_the_whole_file(fault_proxy, s3_server, tmp_path):
    path = tmp_path / "big.parquet"
    idx = np.arange(4000)
    noise = np.random.default_rng(0).bytes(4000 * 200)  # ~800 KB that does not compress
    blobs = [noise[i * 200 : (i + 1) * 200] for i in idx]
    pq.write_table(pa.table({"i": idx, "b": blobs}), path, row_group_size=500)
    bucket = upload(s3_server, tmp_path)  # uploaded directly, not through the proxy
    size = path.stat().st_size
    got = fastload.convert(
        f"{bucket}/big.parquet",
        tmp_path / "out",
        storage_options=fault_proxy.storage_options,
        shard_size=size // 4,
        workers=1,
        progress=False,
    )
    assert got.records == 4000 and got.tasks >= 3
    gets = [(r, f) for method, p, r, f in fault_proxy.log if method == "GET" and "big" in p]
    assert gets and all(r is not None for r, _ in gets), gets  # every GET is a ranged one
    spans = [tuple(map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", r).groups())) for r, _ in gets]
    assert max(b - a + 1 for a, b in spans) < size / 2
    # Footers (the file's last 64 KiB, once per task and for the schema) aside, each row group
    # is fetched about once (the first one's column of blobs also for the image test).
    footers = [(a, b) for a, b in spans if b == size - 1]
    assert len(footers) <= got.tasks + 2
    assert sum(b - a + 1 for a, b in spans if b != size - 1) < 1.25 * size


def test_transient_faults_while_reading_are_retried(fault_proxy, s3_server, tmp_path):
    rel, _ = make_input("webdataset", tmp_path / "in")
    bucket = upload(s3_server, tmp_path / "in")
    fastload.convert(tmp_path / "in" / rel, tmp_path / "local", **COMMON)
    fault_proxy.script(["503", "reset", None, "truncate", "500", None, "503"])
    got = fastload.convert(
        f"{bucket}/{rel}",
        tmp_path / "remote",
        storage_options=fault_proxy.storage_options,
        workers=1,
        **COMMON,
    )
    assert fault_proxy.counts.get("503", 0) == 2 and fault_proxy.counts.get("truncate") == 1
    assert got.records == 20
    assert dir_bytes(tmp_path / "remote") == dir_bytes(tmp_path / "local")


def run_cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastload", "convert", *map(str, args), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def closed_port_options() -> dict:
    """s3fs options for an endpoint on loopback where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {
        "key": "test",
        "secret": "test",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
    }


def test_an_unreachable_source_is_one_line_naming_it(tmp_path):
    options = json.dumps(closed_port_options())
    start = time.monotonic()
    done = run_cli("s3://nowhere/data", tmp_path / "out", "--storage-options", options)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("fastload convert: error:") and "s3://nowhere/data" in lines[0]
    assert time.monotonic() - start < 60
    assert not (tmp_path / "out").exists()


def test_an_unreachable_destination_is_one_line_naming_it(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"i": 1}\n')
    options = json.dumps(closed_port_options())
    done = run_cli(tmp_path / "a.jsonl", "s3://nowhere/ds", "--storage-options", options)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert "destination s3://nowhere/ds" in lines[0]


def test_a_missing_remote_input_is_named(s3_server, s3_bucket, tmp_path):
    opts = {"storage_options": s3_server.storage_options, "progress": False}
    with pytest.raises(ConvertError, match=rf"{s3_bucket}/missing: no such file or directory"):
        fastload.convert(f"{s3_bucket}/missing", tmp_path / "out", **opts)
    with pytest.raises(FastloadError, match="missing.parquet"):
        fastload.convert(f"{s3_bucket}/missing.parquet", tmp_path / "out", source="parquet", **opts)


def test_source_and_destination_each_take_their_own_options(s3_server, gcs_server, tmp_path):
    rel, _ = make_input("jsonl", tmp_path / "in")
    bucket = upload(s3_server, tmp_path / "in")
    dst = f"{gcs_server.new_bucket()}/ds"
    done = run_cli(
        f"{bucket}/{rel}",
        dst,
        "--src-storage-options",
        json.dumps(s3_server.storage_options),
        "--storage-options",
        json.dumps(gcs_server.storage_options),
        "--shard-size",
        "4KB",
    )
    assert done.returncode == 0, done.stderr
    ds = fastload.Dataset(dst, storage_options=gcs_server.storage_options, cache_dir=False)
    assert [r["i"] for r in ds] == list(range(1000))


@pytest.mark.parametrize("server_kind", ["s3", "gcs"])
def test_hugging_face_layouts_from_a_bucket(server_kind, request, tmp_path):
    """Images stored by path (read from the bucket, relative to SRC), and a DatasetDict
    folder's split, as from local disk."""
    import datasets

    from tests.convert.test_hf import check_hf_row, check_row, hf_dataset, hf_table

    server = request.getfixturevalue(f"{server_kind}_server")
    (tmp_path / "in" / "table" / "pics").mkdir(parents=True)
    for i in (1, 4):
        (tmp_path / "in" / "table" / "pics" / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    paths = {1: "pics/1.jpg", 4: "pics/4.jpg"}
    pq.write_table(hf_table(0, 6, image_paths=paths), tmp_path / "in" / "table" / "x.parquet")
    dd = datasets.DatasetDict({"train": hf_dataset(7), "test": hf_dataset(3)})
    dd.save_to_disk(str(tmp_path / "in" / "dd"))
    bucket = upload(server, tmp_path / "in")
    opts = {"storage_options": server.storage_options, "progress": False}
    fastload.convert(f"{bucket}/table", tmp_path / "table", **opts)
    for i, r in enumerate(fastload.Dataset(tmp_path / "table")):
        check_row(r, i)
    got = fastload.convert(f"{bucket}/dd", tmp_path / "dd", split="train", **opts)
    assert (
        got.records == 7 and fastload.Dataset(tmp_path / "dd").schema["grid"].spec == "int32[2,3]"
    )
    for i, r in enumerate(fastload.Dataset(tmp_path / "dd")):
        check_hf_row(r, i)


@pytest.mark.ray
def test_remote_source_on_ray(ray_cluster, s3_server, tmp_path):
    rel, options = make_input("parquet", tmp_path / "in")
    bucket = upload(s3_server, tmp_path / "in")
    local = fastload.convert(tmp_path / "in" / rel, tmp_path / "local", **COMMON, **options)
    on_ray = fastload.convert(
        f"{bucket}/{rel}",
        tmp_path / "ray",
        storage_options=s3_server.storage_options,
        ray=True,
        **COMMON,
        **options,
    )
    assert on_ray.tasks == local.tasks > 2 and on_ray.workers == 0
    assert dir_bytes(tmp_path / "ray") == dir_bytes(tmp_path / "local")
