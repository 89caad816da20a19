"""RemoteOptions(share_manifest=True): the local ranks of one launch read a remote manifest
once (local rank 0), the others take its copy; failures and absences are reported, not
waited out; copies of finished launches are cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import fastload
from fastload.errors import ManifestError
from fastload.format.spec import TMP_SUFFIX
from fastload.io.manifest_share import SHARE_DIR, launch_of_this_process
from fastload.io.remote import RemoteOptions
from tests.format.formattools import write_index_dataset

pytestmark = [pytest.mark.remote, pytest.mark.timeout(120)]

N = 60
SHARED = RemoteOptions(share_manifest=True, manifest_wait_s=30)


@pytest.fixture(scope="module")
def url(s3_server, tmp_path_factory) -> str:
    local = write_index_dataset(tmp_path_factory.mktemp("share") / "ds", N, shard_size=4000)
    url = f"{s3_server.new_bucket()}/ds"
    s3_server.fs().put(str(local), url.split("://", 1)[1], recursive=True)
    return url


def manifest_gets(proxy) -> int:
    return sum(
        1 for method, path, _, _ in proxy.log if method == "GET" and path.endswith("manifest.json")
    )


def copies(cache) -> list[str]:
    folder = cache / "fastload-cache-v1" / SHARE_DIR
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_local_rank_0_reads_and_the_others_take_its_copy(fault_proxy, url, tmp_path, monkeypatch):
    opts = dict(
        storage_options=fault_proxy.storage_options, cache_dir=tmp_path / "c", remote_options=SHARED
    )
    monkeypatch.setenv("LOCAL_RANK", "0")
    with fastload.Dataset(url, **opts) as ds:
        first = ds.manifest
    assert manifest_gets(fault_proxy) == 1
    assert [name.endswith(".json") for name in copies(tmp_path / "c")] == [True]
    for rank in ("1", "2"):
        monkeypatch.setenv("LOCAL_RANK", rank)
        with fastload.Dataset(url, **opts) as ds:
            assert ds.manifest == first and len(ds) == N
            assert ds[N - 1]["i"] == N - 1
    assert manifest_gets(fault_proxy) == 1
    # without LOCAL_RANK (or without share_manifest) every process reads its own
    monkeypatch.delenv("LOCAL_RANK")
    assert launch_of_this_process() is None
    with fastload.Dataset(url, **opts):
        pass
    monkeypatch.setenv("LOCAL_RANK", "1")
    with fastload.Dataset(
        url, storage_options=fault_proxy.storage_options, cache_dir=tmp_path / "c"
    ):
        pass
    assert manifest_gets(fault_proxy) == 3


def test_a_rank_without_its_local_rank_0_says_what_it_waited_for(
    fault_proxy, url, tmp_path, monkeypatch
):
    monkeypatch.setenv("LOCAL_RANK", "3")
    t = time.monotonic()
    with pytest.raises(ManifestError, match=r"(?s)waited 0.3 s for local rank 0.*never appeared"):
        fastload.Dataset(
            url,
            storage_options=fault_proxy.storage_options,
            cache_dir=tmp_path / "c",
            remote_options=RemoteOptions(share_manifest=True, manifest_wait_s=0.3),
        )
    assert time.monotonic() - t < 5
    assert manifest_gets(fault_proxy) == 0


def test_local_rank_0_failing_fails_the_others_at_once(fault_proxy, url, tmp_path, monkeypatch):
    opts = dict(
        storage_options=fault_proxy.storage_options, cache_dir=tmp_path / "c", remote_options=SHARED
    )
    fault_proxy.match = "manifest.json"
    fault_proxy.script(["403"])
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(fastload.errors.RemoteAccessError):
        fastload.Dataset(url, **opts)
    monkeypatch.setenv("LOCAL_RANK", "1")
    t = time.monotonic()
    with pytest.raises(ManifestError, match="local rank 0 of this node could not read"):
        fastload.Dataset(url, **opts)
    assert time.monotonic() - t < 5  # not the 30 s wait
    # local rank 0 trying again (the fault is gone) clears the failure for the others
    monkeypatch.setenv("LOCAL_RANK", "0")
    fastload.Dataset(url, **opts).close()
    monkeypatch.setenv("LOCAL_RANK", "1")
    with fastload.Dataset(url, **opts) as ds:
        assert len(ds) == N


def test_copies_of_finished_launches_are_removed(fault_proxy, url, tmp_path, monkeypatch):
    folder = tmp_path / "c" / "fastload-cache-v1" / SHARE_DIR
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [
        f"{'a' * 24}-{dead.pid}-12345.json",
        f"{'b' * 24}-{dead.pid}-12345.error",
        f"{'c' * 24}-{dead.pid}-12345.json.0123abcd{TMP_SUFFIX}",
    ]
    for name in stale + ["notes.txt"]:
        (folder / name).write_bytes(b"x")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with fastload.Dataset(
        url,
        storage_options=fault_proxy.storage_options,
        cache_dir=tmp_path / "c",
        remote_options=SHARED,
    ):
        pass
    left = copies(tmp_path / "c")
    assert "notes.txt" in left and not set(stale) & set(left)
    assert len([n for n in left if n.endswith(".json")]) == 1  # this launch's


RANK = """
import json, sys, time
import fastload
from fastload.io.remote import RemoteOptions
url, options, cache, delay = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4])
time.sleep(delay)
try:
    with fastload.Dataset(url, storage_options=options, cache_dir=cache,
                          remote_options=RemoteOptions(share_manifest=True,
                                                       manifest_wait_s=60)) as ds:
        print(json.dumps({"n": len(ds), "last": int(ds[len(ds) - 1]["i"])}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
"""


def test_ranks_of_one_launch_in_real_processes(fault_proxy, url, tmp_path):
    """Four sibling processes (as a launcher starts them); local rank 0 starts last, so the
    others really wait for its copy. One manifest GET in all."""
    fault_proxy.latency = 0.05
    procs = []
    for rank, delay in ((1, 0.0), (2, 0.0), (3, 0.0), (0, 1.5)):
        env = {**os.environ, "LOCAL_RANK": str(rank)}
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RANK,
                    url,
                    json.dumps(fault_proxy.storage_options),
                    str(tmp_path / "c"),
                    str(delay),
                ],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    outs = [json.loads(p.communicate(timeout=90)[0].strip().splitlines()[-1]) for p in procs]
    assert outs == [{"n": N, "last": N - 1}] * 4
    assert manifest_gets(fault_proxy) == 1
