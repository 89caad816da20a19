"""Shared test setup: ``cuda`` tests skip cleanly without a GPU, the block cache's default
directory is the session's own, and a local Ray cluster on loopback, for convert on Ray. The
markers are declared in pyproject.toml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped, with the reason shown, where torch sees no GPU."""
    gpu_tests = [item for item in items if item.get_closest_marker("cuda")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked cuda)")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir_of_the_session(tmp_path_factory: pytest.TempPathFactory):
    """Compressed datasets keep decompressed copies of their blocks in the block cache's
    default directory: the suite's go to a directory of its own, not the user's cache (a test
    that cares passes cache_dir=)."""
    old = os.environ.get("FASTLOAD_CACHE_DIR")
    os.environ["FASTLOAD_CACHE_DIR"] = str(tmp_path_factory.mktemp("fastload-cache"))
    yield
    if old is None:
        os.environ.pop("FASTLOAD_CACHE_DIR", None)
    else:
        os.environ["FASTLOAD_CACHE_DIR"] = old


def _listening() -> set[tuple[str, str]]:
    """This machine's listening TCP sockets, as (hex address, hex port) from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                found.add(tuple(local.split(":")))
    return found


_LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for one test module (stopped after it, so that no
    later test forks loader workers from a process with Ray's threads running), every
    socket it listens on a loopback address (checked: by default Ray listens on every
    interface; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps it on 127.0.0.1)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # (read as ray is imported)
    import ray  # the test extra installs it: these tests must run

    before = _listening()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        opened = _listening() - before
        assert opened, "Ray listens on no new socket?"
        outside = {addr for addr, _ in opened if addr not in _LOOPBACK}
        assert not outside, f"Ray listens beyond loopback: {outside}"
        yield ray
    finally:
        ray.shutdown()
