"""Fixtures of the loader tests (helpers live in loadertools.py)."""

from __future__ import annotations

import pytest

import fastload

from .loadertools import RELEASE, shm_listing, wait_for, wait_gone, write_dataset


@pytest.fixture(scope="session")
def ds_paths(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("loader-data")
    return {c: write_dataset(root / c, compression=c) for c in ("none", "zstd")}


@pytest.fixture(params=["none", "zstd"])
def ds(request, ds_paths) -> fastload.Dataset:
    """The index dataset, uncompressed and zstd-compressed."""
    with fastload.Dataset(ds_paths[request.param]) as d:
        yield d


@pytest.fixture
def ds1(ds_paths) -> fastload.Dataset:
    """The index dataset (uncompressed only, where compression is irrelevant)."""
    with fastload.Dataset(ds_paths["none"]) as d:
        yield d


@pytest.fixture
def release_threads():
    RELEASE.clear()
    yield RELEASE
    RELEASE.set()


@pytest.fixture
def no_leaks():
    """Every process test must leave no child and nothing in /dev/shm behind."""
    import multiprocessing

    before_shm = shm_listing()
    before_children = {p.pid for p in multiprocessing.active_children()}
    yield
    import gc

    gc.collect()
    children = [p for p in multiprocessing.active_children() if p.pid not in before_children]
    assert wait_gone([p.pid for p in children]) == [], children
    left = wait_for(lambda: shm_listing() - before_shm, 3.0)
    assert not left, f"left in /dev/shm: {sorted(left)}"
