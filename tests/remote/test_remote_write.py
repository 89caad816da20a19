"""Writing datasets straight to S3 (moto) and GCS (emulator) on loopback: ``fastload convert``
and the Writer upload shards as they complete and the manifest last, give the same bytes as a
local convert, survive transient faults, and leave no manifest when interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastload
from fastload.convert import convert
from fastload.errors import ConvertError, IncompleteDatasetError

pytestmark = [pytest.mark.remote, pytest.mark.timeout(180)]

LINES = 600


def write_jsonl(path: Path, n: int = LINES) -> Path:
    path.write_text(
        "".join(json.dumps({"i": i, "text": f"{i:060d}", "score": i / 7}) + "\n" for i in range(n))
    )
    return path


def local_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def remote_bytes(fs, url: str) -> dict[str, bytes]:
    root = url.split("://", 1)[1]
    fs.invalidate_cache()
    return {os.path.basename(p): fs.cat_file(p) for p in sorted(fs.ls(root, detail=False))}


def env_for(server) -> dict[str, str]:
    """The filesystem's usual environment configuration, instead of --storage-options."""
    env = {**os.environ, "FASTLOAD_CACHE_DIR": os.environ.get("FASTLOAD_CACHE_DIR", "")}
    if server.kind == "s3":
        env.update(
            AWS_ENDPOINT_URL=server.endpoint_url,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
        )
    return env


def run_cli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastload", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_cli_convert_to_object_store_matches_local(kind, request, tmp_path):
    server = request.getfixturevalue(f"{kind}_server")
    src = write_jsonl(tmp_path / "in.jsonl")
    local = tmp_path / "local"
    url = f"{server.new_bucket()}/ds"
    common = ["--shard-size", "8KB", "--block-size", "2KB", "--workers", "2", "--no-progress"]
    assert run_cli("convert", src, local, *common).returncode == 0
    if kind == "s3":
        # S3 from the environment alone (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID), as users do.
        done = run_cli("convert", src, url, *common, env=env_for(server))
    else:
        done = run_cli(
            "convert", src, url, *common, "--storage-options", json.dumps(server.storage_options)
        )
    assert done.returncode == 0, done.stderr
    # The same bytes as a local convert, shard for shard, manifest included: output does not
    # depend on where it goes. Nothing else is left in the bucket (parts merged and removed).
    expected = local_bytes(local)
    assert len([n for n in expected if n.endswith(".fls")]) > 2
    assert remote_bytes(server.fs(), url) == expected
    with fastload.Dataset(
        url, storage_options=server.storage_options, cache_dir=tmp_path / "cache"
    ) as ds:
        assert [r["i"] for r in ds] == list(range(LINES))
        assert ds[LINES - 1]["text"] == f"{LINES - 1:060d}"
    verified = run_cli(
        "verify", url, "--no-progress", "--storage-options", json.dumps(server.storage_options)
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.ray
@pytest.mark.slow  # a Ray cluster starts for it (~5 s)
@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_convert_on_ray_to_object_store_matches_local(kind, request, ray_cluster, tmp_path):
    """Ray tasks write their parts straight to the bucket (the storage options travel with
    them), the driver merges the manifest last: the same bytes as a local convert."""
    server = request.getfixturevalue(f"{kind}_server")
    src = write_jsonl(tmp_path / "in.jsonl")
    url = f"{server.new_bucket()}/ds"
    common = dict(shard_size="8KB", block_size="2KB", progress=False)
    convert(src, tmp_path / "local", **common)
    result = convert(src, url, ray=True, storage_options=server.storage_options, **common)
    assert result.tasks > 2
    assert remote_bytes(server.fs(), url) == local_bytes(tmp_path / "local")


def test_writer_uploads_shards_as_they_complete_and_manifest_last(gcs_server, tmp_path):
    url = f"{gcs_server.new_bucket()}/w"
    fs = gcs_server.fs()
    root = url.split("://", 1)[1]
    schema = fastload.Schema({"i": "int", "blob": "bytes"})
    seen_shards_before_close = 0
    with fastload.Writer(
        url,
        schema=schema,
        storage_options=gcs_server.storage_options,
        shard_size=20_000,
        block_size=4_000,
    ) as w:
        for i in range(200):
            w.write({"i": i, "blob": os.urandom(500)})
        fs.invalidate_cache()
        names = [os.path.basename(p) for p in fs.ls(root, detail=False)]
        seen_shards_before_close = sum(n.endswith(".fls") for n in names)
        assert "manifest.json" not in names  # no dataset until the manifest, written last
    assert seen_shards_before_close >= 3  # completed shards were already uploaded
    with fastload.Dataset(url, storage_options=gcs_server.storage_options, cache_dir=False) as ds:
        assert [r["i"] for r in ds] == list(range(200))


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_writer_failing_midway_leaves_no_dataset(kind, request):
    server = request.getfixturevalue(f"{kind}_server")
    url = f"{server.new_bucket()}/broken"
    schema = fastload.Schema({"i": "int"})
    with pytest.raises(RuntimeError, match="source died"):
        with fastload.Writer(
            url,
            schema=schema,
            storage_options=server.storage_options,
            shard_size=2_000,
            block_size=500,
        ) as w:
            for i in range(2_000):
                w.write({"i": i})
                if i == 1_500:
                    raise RuntimeError("source died")
    fs = server.fs()
    assert not fs.exists(f"{url.split('://', 1)[1]}/manifest.json")
    with pytest.raises(IncompleteDatasetError):
        fastload.Dataset(url, storage_options=server.storage_options, cache_dir=False)


@pytest.mark.slow
def test_sigkilled_convert_to_s3_leaves_no_manifest_and_rerun_cleans_up(s3_server, tmp_path):
    src = write_jsonl(tmp_path / "big.jsonl", 60_000)
    url = f"{s3_server.new_bucket()}/killed"
    root = url.split("://", 1)[1]
    args = [
        sys.executable,
        "-m",
        "fastload",
        "convert",
        str(src),
        url,
        "--workers",
        "2",
        "--shard-size",
        "200KB",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        args,
        env=env_for(s3_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    fs = s3_server.fs()
    deadline = time.monotonic() + 90
    try:
        while True:  # kill it once some shards are up, part-way through
            fs.invalidate_cache()
            if fs.exists(root) and any(p.endswith(".fls") for p in fs.ls(root, detail=False)):
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the convert uploaded no shard"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)  # orphaned workers notice the parent is gone and stop
    fs.invalidate_cache()
    left = [os.path.basename(p) for p in fs.ls(root, detail=False)]
    assert "manifest.json" not in left
    with pytest.raises(IncompleteDatasetError):
        fastload.Dataset(url, storage_options=s3_server.storage_options, cache_dir=False)
    done = subprocess.run(args, env=env_for(s3_server), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    with fastload.Dataset(url, storage_options=s3_server.storage_options, cache_dir=False) as ds:
        assert len(ds) == 60_000
        assert ds.get_batch([0, 29_999, 59_999])["i"].tolist() == [0, 29_999, 59_999]
    # the rerun removed the first run's leftovers: every shard in the bucket is in the manifest
    fs.invalidate_cache()
    names = {os.path.basename(p) for p in fs.ls(root, detail=False)}
    assert names == {"manifest.json", *(s.path for s in ds.shards)}


def test_uploads_survive_transient_faults(fault_proxy, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl")
    url = f"s3://{fault_proxy_bucket(fault_proxy)}/faulty"
    fault_proxy.methods = ("PUT", "POST")
    fault_proxy.script(["503", "reset", "500", None, "503"])
    result = convert(
        src,
        url,
        storage_options=fault_proxy.storage_options,
        shard_size="8KB",
        block_size="2KB",
        progress=False,
    )
    assert result.shards > 2
    assert sum(fault_proxy.counts.get(k, 0) for k in ("500", "503", "reset")) == 4
    fault_proxy.methods = ()
    with fastload.Dataset(url, storage_options=fault_proxy.storage_options, cache_dir=False) as ds:
        assert [r["i"] for r in ds] == list(range(LINES))


def test_refused_upload_fails_cleanly_naming_the_destination(fault_proxy, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl")
    url = f"s3://{fault_proxy_bucket(fault_proxy)}/denied"
    fault_proxy.methods = ("PUT", "POST")
    fault_proxy.kinds, fault_proxy.rate = ("403",), 1.0
    with pytest.raises(ConvertError) as err:
        convert(
            src, url, storage_options=fault_proxy.storage_options, shard_size="8KB", progress=False
        )
    assert "denied" in str(err.value)
    fault_proxy.rate = 0.0
    fs = fault_proxy_fs(fault_proxy)
    assert not fs.exists(f"{url.split('://', 1)[1]}/manifest.json")


def fault_proxy_fs(proxy):
    import fsspec

    return fsspec.filesystem("s3", skip_instance_cache=True, **proxy.storage_options)


def fault_proxy_bucket(proxy) -> str:
    """A fresh bucket, created through the proxy before any fault is armed."""
    import uuid

    name = f"fl-{uuid.uuid4().hex[:12]}"
    fault_proxy_fs(proxy).mkdir(name)
    return name
