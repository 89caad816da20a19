"""The servers and the fault proxy the remote tests stand on."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.remote, pytest.mark.timeout(60)]


def test_s3_server_roundtrip(s3_server, s3_bucket):
    fs = s3_server.fs()
    fs.pipe(f"{s3_bucket}/a/b.bin", b"hello world")
    assert fs.cat_file(f"{s3_bucket}/a/b.bin", start=6, end=11) == b"world"


def test_gcs_server_roundtrip(gcs_server, gcs_bucket):
    fs = gcs_server.fs()
    fs.pipe(f"{gcs_bucket}/a/b.bin", b"hello world")
    assert fs.cat_file(f"{gcs_bucket}/a/b.bin", start=6, end=11) == b"world"


def test_fault_proxy_passes_and_faults(s3_server, s3_bucket, fault_proxy):
    import fsspec

    s3_server.fs().pipe(f"{s3_bucket}/x", bytes(range(256)) * 64)
    fs = fsspec.filesystem(
        "s3",
        skip_instance_cache=True,
        **{
            **fault_proxy.storage_options,
            "config_kwargs": {
                "retries": {"total_max_attempts": 1},
                "read_timeout": 1,
                "connect_timeout": 1,
            },
        },
    )
    fs.retries = 1  # s3fs's own retry loop
    assert fs.cat_file(f"{s3_bucket}/x", start=0, end=100) == bytes(range(100))
    fault_proxy.script(["short"])
    assert len(fs.cat_file(f"{s3_bucket}/x", start=0, end=100)) == 50
    fault_proxy.stall_seconds = 1.5
    for kind in ("503", "500", "truncate", "stall"):  # ("reset": aiohttp retries it itself)
        fault_proxy.script([kind])
        with pytest.raises(Exception):  # noqa: B017 (each fault's own client error)
            fs.cat_file(f"{s3_bucket}/x", start=0, end=1000)
    assert fault_proxy.counts["503"] == 1
