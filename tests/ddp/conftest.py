"""Fixtures of the plan-wiring tests: small fastload datasets, written once per session."""

from __future__ import annotations

import pytest

import fastload

from .ddptools import write_index_dataset


@pytest.fixture(scope="session")
def index_paths(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp-data")
    return {
        "a": write_index_dataset(root / "a", 97),
        "z": write_index_dataset(root / "z", 97, compression="zstd"),
        "b": write_index_dataset(root / "b", 30),
    }


@pytest.fixture
def ids(index_paths) -> fastload.Dataset:
    """97 records, uncompressed."""
    with fastload.Dataset(index_paths["a"]) as d:
        yield d
