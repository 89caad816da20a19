"""The work-splitting strategies (splits.py): chosen in one place, carried in each task by
their code, and merging a batch's shares themselves."""

from __future__ import annotations

import numpy as np
import pytest

import fastload
from fastload.format.schema import Schema
from fastload.loader.layout import BatchLayout
from fastload.loader.messages import BatchResult, BatchTask, WorkerError, decode, encode_tasks
from fastload.loader.splits import (
    SHARED_BLOCKS,
    SHARED_IMAGES,
    WHOLE_BATCHES,
    choose_split,
    split_of,
)


@pytest.mark.parametrize("split", [WHOLE_BATCHES, SHARED_IMAGES, SHARED_BLOCKS])
def test_a_task_carries_its_strategy_through_a_message(split):
    task = BatchTask(3, 1, np.arange(40), (7, 9), part=1, parts=2, split=split.code)
    (back,) = decode(encode_tasks([task]))
    assert split_of(back.split) is split


def test_shares_of_contiguous_rows_merge_in_row_order():
    second = BatchResult(5, 2, 3, {"s": ["d", "e", "f"]}, {"read": 1.0, "io": {"n": 2}}, part=1)
    first = BatchResult(5, 2, 2, {"s": ["a", "b"]}, {"read": 0.5, "io": {"n": 1}}, bad=[(1, "x")])
    merged = SHARED_IMAGES.merge([second, first])  # received in any order
    assert (merged.batch, merged.slab, merged.samples) == (5, 2, 5)
    assert merged.listed == {"s": ["a", "b", "d", "e", "f"]}
    assert merged.timings == {"read": 1.5, "io": {"n": 3}} and merged.bad == [(1, "x")]


def test_shares_by_block_put_their_rows_in_place():
    a = BatchResult(0, 0, 2, {"s": ["r0", "r3"], "v": np.array([0, 3])}, {}, rows=np.array([0, 3]))
    b = BatchResult(0, 0, 2, {"s": ["r1", "r2"], "v": np.array([1, 2])}, {}, rows=np.array([1, 2]))
    merged = SHARED_BLOCKS.merge([b, a])
    assert merged.samples == 4 and merged.listed["s"] == ["r0", "r1", "r2", "r3"]
    assert merged.listed["v"].tolist() == [0, 1, 2, 3]


def test_a_failed_share_fails_the_batch():
    error = WorkerError("ValueError", "builtins", "bad", "tb", 1, 2, "here")
    ok = BatchResult(4, 1, 8, {}, {"read": 1.0})
    merged = SHARED_BLOCKS.merge([ok, BatchResult(4, 1, error=error, part=1, parts=2)])
    assert merged.error is error and merged.samples == 0


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A raw and a compressed token-like dataset, and an image schema's layouts."""
    root = tmp_path_factory.mktemp("splits")
    paths = {}
    for compression in ("none", "zstd"):
        paths[compression] = root / compression
        with fastload.Writer(
            paths[compression], {"t": "uint16[64]"}, block_size=4096, compression=compression
        ) as w:
            for i in range(300):
                w.write({"t": np.full(64, i % 7, np.uint16)})
    return paths


@pytest.mark.parametrize(
    "data,cache,copies,decode,workers,worker_type,persistent,batch,want",
    [
        ("none", None, None, "cpu", 2, "process", False, 32, SHARED_IMAGES),
        ("none", None, None, "cpu", 2, "process", False, 31, WHOLE_BATCHES),  # shares under 16
        ("none", None, None, "cpu", 1, "process", False, 256, WHOLE_BATCHES),
        ("none", None, None, "dali", 2, "process", False, 256, WHOLE_BATCHES),
        ("zstd", None, None, None, 2, "process", False, 16, SHARED_BLOCKS),
        ("zstd", None, None, None, 2, "process", True, 16, WHOLE_BATCHES),  # fits one cache
        ("zstd", "1KiB", None, None, 2, "process", True, 16, SHARED_BLOCKS),  # outgrows it
        ("zstd", None, None, None, 2, "thread", False, 16, WHOLE_BATCHES),  # one cache already
        ("none", None, None, None, 2, "process", False, 16, WHOLE_BATCHES),  # nothing to do
        ("zstd", "1KiB", "1GB", None, 2, "process", False, 16, WHOLE_BATCHES),  # copies fit
        ("zstd", "1KiB", "4KiB", None, 2, "process", True, 16, SHARED_BLOCKS),  # they do not
    ],
)
def test_the_strategy_is_chosen_in_one_place(
    datasets, tmp_path, data, cache, copies, decode, workers, worker_type, persistent, batch, want
):
    """(copies: the cache_limit of decompressed copies on disk; None: no copies)"""
    kwargs = {"block_cache": cache} if cache else {}
    kwargs["cache_dir"] = tmp_path / "cache" if copies else False
    if copies:
        kwargs["cache_limit"] = copies
    ds = fastload.Dataset(datasets[data], **kwargs)
    schema = ds.schema
    specs = {}
    if decode is not None:  # a layout with an image field (its schema only: nothing is read)
        schema = Schema({"t": "uint16[64]", "img": "image"})
        specs = {"img": fastload.ImageDecode(64, backend=decode)}
    got = choose_split(
        ds,
        BatchLayout(schema, batch, specs),
        workers=workers,
        worker_type=worker_type,
        persistent=persistent,
        batch_size=batch,
    )
    assert got is want
