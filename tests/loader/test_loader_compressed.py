"""Shuffled loading from compressed blocks: each process decompresses a block once while the
dataset fits its block_cache, and the loader says so when it does not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from formattools import write_compressed_rows

import fastload


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    path = tmp_path_factory.mktemp("z") / "z"
    return path, write_compressed_rows(path, 480)  # 60 blocks of 8 rows


@pytest.mark.filterwarnings("ignore:.*compressed blocks")  # what the next test is about
@pytest.mark.parametrize("num_workers", [0, 2])
def test_shuffled_epochs_read_the_right_rows(compressed, num_workers):
    path, rows = compressed
    ds = fastload.Dataset(path, block_cache="64KiB")  # 8 of its 60 blocks
    loader = fastload.DataLoader(ds, batch_size=16, shuffle=True, num_workers=num_workers,
                                 generator=torch.Generator().manual_seed(3))  # fmt: skip
    order = torch.cat(list(torch.utils.data.DataLoader(
        range(len(ds)), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))))
    got = torch.cat([b["tokens"] for b in loader]).numpy()
    np.testing.assert_array_equal(got, rows[order])


def test_random_order_over_a_dataset_larger_than_its_block_cache_warns(compressed):
    path, _ = compressed
    small = fastload.Dataset(path, block_cache="64KiB")
    for kwargs in ({"shuffle": True}, {"shuffle": True, "seed": 0}, {"shuffle": "global"}):
        with pytest.warns(UserWarning, match=r"random order from compressed blocks.*"
                                             r"shuffle='block'"):  # fmt: skip
            fastload.DataLoader(small, batch_size=8, **kwargs)
    with pytest.warns(UserWarning, match="compressed blocks.*shuffle='block'"):
        fastload.DataLoader(fastload.Mix([small, small]), batch_size=8, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastload.DataLoader(small, batch_size=8)  # storage order: each block read once
        fastload.DataLoader(small, batch_size=8, shuffle="block")
        fastload.DataLoader(fastload.Mix([small, small]), batch_size=8, shuffle="block",
                            block_window=4)  # fmt: skip
        fastload.DataLoader(fastload.Dataset(path), batch_size=8, shuffle=True)  # it fits


def test_a_mix_in_block_order_warns_when_two_windows_do_not_fit_the_cache(compressed):
    path, _ = compressed  # blocks of 8 KiB decompressed
    small = fastload.Dataset(path, block_cache="64KiB")
    with pytest.raises(UserWarning, match=r"block order .*\(2 windows of 16\).*block_window"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fastload.DataLoader(fastload.Mix([small, small]), batch_size=8, shuffle="block")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2 windows of 4 blocks: 64 KiB, it fits
        fastload.DataLoader(fastload.Mix([small, small]), batch_size=8, shuffle="block",
                            block_window=4)  # fmt: skip


def test_no_warning_for_raw_blocks(tmp_path):
    rows = np.random.default_rng(0).integers(0, 65535, (200, 512), dtype=np.uint16)
    with fastload.Writer(tmp_path / "r", {"tokens": "uint16[512]"}, block_size=8192,
                         compression="zstd") as w:  # random tokens: zstd does not pay  # fmt: skip
        for row in rows:
            w.write({"tokens": row})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastload.DataLoader(fastload.Dataset(tmp_path / "r", block_cache=0), batch_size=8,
                            shuffle=True)  # fmt: skip


def test_a_mix_in_block_order_decompresses_each_block_about_once(tmp_path):
    """shuffle='block' on a Mix of compressed datasets: a stratum's draws of each dataset come
    from a window or two of its blocks, so a small block_cache decompresses each block about
    once per epoch, where the global order decompresses most records' blocks again."""
    rows = [write_compressed_rows(tmp_path / k, 480) for k in "ab"]

    def epoch(shuffle) -> tuple[int, int, list]:
        parts = [fastload.Dataset(tmp_path / k, block_cache="128KiB") for k in "ab"]
        mix = fastload.Mix(parts, stratum=64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the global order's warning: the point here
            loader = fastload.DataLoader(mix, batch_size=16, shuffle=shuffle, seed=0,
                                         block_window=2)  # fmt: skip
        got = torch.cat([b["tokens"] for b in loader]).numpy()
        blocks = sum(s.blocks for d in parts for s in d.shards)
        return sum(d._decoded.misses for d in parts), blocks, got

    misses, blocks, got = epoch("block")
    every = np.concatenate(rows)
    assert sorted(map(bytes, got)) == sorted(map(bytes, every))  # every row once
    assert misses <= 1.1 * blocks
    global_misses, _, _ = epoch(True)
    assert global_misses > 3 * blocks
