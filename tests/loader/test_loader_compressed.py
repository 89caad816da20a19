"""Shuffled loading from compressed blocks kept in memory (decompressed copies on disk turned
off, ``cache_dir=False``: test_loader_copies.py has those): each process decompresses a block
once while the dataset fits its block_cache, workers share the blocks out when it does not,
and the loader says so."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

import fastload
from tests.format.formattools import write_compressed_rows

Dataset = functools.partial(fastload.Dataset, cache_dir=False)  # blocks kept in memory only


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    path = tmp_path_factory.mktemp("z") / "z"
    return path, write_compressed_rows(path, 480)  # 60 blocks of 8 rows


@pytest.mark.filterwarnings("ignore:.*compressed blocks")  # what the next test is about
@pytest.mark.parametrize("num_workers", [0, 2])
def test_shuffled_epochs_read_the_right_rows(compressed, num_workers):
    path, rows = compressed
    ds = Dataset(path, block_cache="64KiB")  # 8 of its 60 blocks
    loader = fastload.DataLoader(
        ds,
        batch_size=16,
        shuffle=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(3),
    )
    order = torch.cat(
        list(
            torch.utils.data.DataLoader(
                range(len(ds)),
                batch_size=16,
                shuffle=True,
                generator=torch.Generator().manual_seed(3),
            )
        )
    )
    got = torch.cat([b["tokens"] for b in loader]).numpy()
    np.testing.assert_array_equal(got, rows[order])


def test_random_order_over_a_dataset_larger_than_its_block_cache_warns(compressed):
    path, _ = compressed
    small = Dataset(path, block_cache="64KiB")
    for kwargs in ({"shuffle": True}, {"shuffle": True, "seed": 0}, {"shuffle": "global"}):
        with pytest.warns(
            UserWarning,
            match=r"random order from compressed blocks.*"
            r"shuffle='block'",
        ):
            fastload.DataLoader(small, batch_size=8, **kwargs)
    with pytest.warns(UserWarning, match="compressed blocks.*shuffle='block'"):
        fastload.DataLoader(fastload.Mix([small, small]), batch_size=8, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastload.DataLoader(small, batch_size=8)  # storage order: each block read once
        fastload.DataLoader(small, batch_size=8, shuffle="block")
        fastload.DataLoader(
            fastload.Mix([small, small]), batch_size=8, shuffle="block", block_window=4
        )
        fastload.DataLoader(Dataset(path), batch_size=8, shuffle=True)  # it fits


def test_a_mix_in_block_order_warns_when_two_windows_do_not_fit_the_cache(compressed):
    path, _ = compressed  # blocks of 8 KiB decompressed
    small = Dataset(path, block_cache="64KiB")
    with pytest.raises(UserWarning, match=r"block order .*\(2 windows of 16\).*block_window"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fastload.DataLoader(fastload.Mix([small, small]), batch_size=8, shuffle="block")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2 windows of 4 blocks: 64 KiB, it fits
        fastload.DataLoader(
            fastload.Mix([small, small]), batch_size=8, shuffle="block", block_window=4
        )


def test_no_warning_for_raw_blocks(tmp_path):
    rows = np.random.default_rng(0).integers(0, 65535, (200, 512), dtype=np.uint16)
    with fastload.Writer(
        tmp_path / "r", {"tokens": "uint16[512]"}, block_size=8192, compression="zstd"
    ) as w:  # random tokens: zstd does not pay
        for row in rows:
            w.write({"tokens": row})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastload.DataLoader(Dataset(tmp_path / "r", block_cache=0), batch_size=8, shuffle=True)


def test_a_mix_in_block_order_decompresses_each_block_about_once(tmp_path):
    """shuffle='block' on a Mix of compressed datasets: a stratum's draws of each dataset come
    from a window or two of its blocks, so a small block_cache decompresses each block about
    once per epoch, where the global order decompresses most records' blocks again."""
    rows = [write_compressed_rows(tmp_path / k, 480) for k in "ab"]

    def epoch(shuffle) -> tuple[int, int, list]:
        parts = [Dataset(tmp_path / k, block_cache="128KiB") for k in "ab"]
        mix = fastload.Mix(parts, stratum=64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the global order's warning: the point here
            loader = fastload.DataLoader(
                mix, batch_size=16, shuffle=shuffle, seed=0, block_window=2
            )
        got = torch.cat([b["tokens"] for b in loader]).numpy()
        blocks = sum(s.blocks for d in parts for s in d.shards)
        return sum(d._decoded.misses for d in parts), blocks, got

    misses, blocks, got = epoch("block")
    every = np.concatenate(rows)
    assert sorted(map(bytes, got)) == sorted(map(bytes, every))  # every row once
    assert misses <= 1.1 * blocks
    global_misses, _, _ = epoch(True)
    assert global_misses > 3 * blocks


# ------------------------------------------------------- workers share out the blocks


def test_block_numbers_name_each_records_block(compressed, tmp_path):
    path, _ = compressed
    ds = Dataset(path)
    base = np.cumsum([0] + [s.blocks for s in ds.shards])
    want = np.concatenate(
        [base[s] + ds.shard_reader(s).index.entries()["block"] for s in range(len(ds.shards))]
    )
    idx = np.random.default_rng(0).permutation(len(ds))
    for fresh in (Dataset(path), ds):  # no shard open yet; every shard open
        np.testing.assert_array_equal(fresh.block_numbers(idx), want[idx])
    np.testing.assert_array_equal(
        ds.block_numbers([-1, len(ds), -len(ds) - 1, 0]), [want[-1], -1, -1, want[0]]
    )
    assert len(ds.block_numbers([])) == 0


@pytest.mark.parametrize("parts", [2, 3])
def test_block_shares_fill_every_row_once_and_decompress_each_block_once(compressed, parts):
    """fill_block_share, as ``parts`` worker processes run it: together the shares fill each
    batch exactly as one worker does, and each block is decompressed by one of them."""
    from fastload.loader.fill import fill_batch, fill_block_share
    from fastload.loader.layout import BatchLayout

    path, rows = compressed
    workers = [Dataset(path) for _ in range(parts)]
    layout = BatchLayout(workers[0].schema, 16)
    for indices in np.array_split(np.random.default_rng(1).permutation(len(rows)), 30):
        shared = np.zeros(layout.slab_size, np.uint8)
        filled = [
            len(fill_block_share(ds, layout, shared, indices, k, parts)[0])
            for k, ds in enumerate(workers)
        ]
        assert sum(filled) == len(indices)
        whole = np.zeros(layout.slab_size, np.uint8)
        fill_batch(Dataset(path), layout, whole, indices, (0, 0))
        assert shared.tobytes() == whole.tobytes()
        np.testing.assert_array_equal(layout.views(shared, len(indices))["tokens"], rows[indices])
    blocks = sum(s.blocks for s in workers[0].shards)
    assert sum(ds._decoded.misses for ds in workers) == blocks
    assert all(ds._decoded.misses < blocks * 0.7 for ds in workers)


@pytest.mark.parametrize("shuffle", [False, True, "block"])
@pytest.mark.parametrize("num_workers,persistent", [(2, False), (3, True)])
def test_workers_share_out_a_compressed_dataset_block_by_block(
    compressed, shuffle, num_workers, persistent
):
    """A compressed dataset larger than one worker's block cache but not than all of theirs:
    the workers share each batch out by block, so each block is decompressed once for the
    whole run (whole batches had every worker decompress most records' blocks again each
    epoch), and the batches are those of one process."""
    path, rows = compressed  # 60 blocks of 8 KiB decompressed
    blocks = sum(s.blocks for s in Dataset(path).shards)

    def run(workers: int) -> tuple[list, dict, bool]:
        ds = Dataset(path, block_cache="320KiB")  # 40 of the 60 blocks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one process's cache is too small: the point
            loader = fastload.DataLoader(
                ds,
                batch_size=16,
                shuffle=shuffle,
                seed=4,
                num_workers=workers,
                persistent_workers=persistent and workers > 0,
                block_window=4,
            )
        epochs = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            epochs.append(torch.cat([b["tokens"] for b in loader]).numpy())
        shared = loader._by_block
        stats = loader.stats()
        loader.close()
        return epochs, stats, shared

    alone, _, _ = run(0)
    epochs, stats, shared = run(num_workers)
    for got, want in zip(epochs, alone):
        np.testing.assert_array_equal(got, want)
    assert sorted(map(bytes, epochs[0])) == sorted(map(bytes, rows))
    if persistent:
        assert stats["decompressed_blocks"] == blocks
    else:  # workers start afresh each epoch: each block once per epoch
        assert stats["decompressed_blocks"] == 2 * blocks
    assert shared


@pytest.mark.parametrize("shuffle", [True, "block"])
def test_workers_share_out_the_blocks_of_a_mix(tmp_path, shuffle):
    rows = [write_compressed_rows(tmp_path / k, n) for k, n in (("a", 480), ("b", 160))]

    def epoch(workers: int) -> tuple[np.ndarray, fastload.DataLoader]:
        mix = fastload.Mix([Dataset(tmp_path / k) for k in "ab"], stratum=64)
        loader = fastload.DataLoader(
            mix, batch_size=16, shuffle=shuffle, seed=1, num_workers=workers, block_window=2
        )
        return torch.cat([b["tokens"] for b in loader]).numpy(), loader

    alone, _ = epoch(0)
    got, loader = epoch(2)
    assert loader._by_block
    np.testing.assert_array_equal(got, alone)
    assert sorted(map(bytes, got)) == sorted(map(bytes, np.concatenate(rows)))
    assert loader.stats()["decompressed_blocks"] == 60 + 20  # each block once


def test_mix_block_numbers_follow_its_datasets(compressed):
    path, _ = compressed
    a, b = Dataset(path), Dataset(path)
    mix = fastload.Mix([a, b])
    n, blocks = len(a), sum(s.blocks for s in a.shards)
    idx = np.array([0, n - 1, n, 2 * n - 1, -1, 2 * n])
    want = np.concatenate(
        [a.block_numbers(idx[:2]), blocks + b.block_numbers([0, n - 1]), [-1, -1]]
    )
    np.testing.assert_array_equal(mix.block_numbers(idx), want)


def test_which_loaders_share_out_blocks(compressed, tmp_path):
    path, _ = compressed
    ds = Dataset(path)  # 480 KiB decompressed: fits its 128 MiB block cache
    small = Dataset(path, block_cache="64KiB")

    def shares(dataset, **kwargs) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fastload.DataLoader(dataset, batch_size=8, **kwargs)._by_block

    assert shares(ds, num_workers=2)  # workers afresh each epoch: each decompresses it all
    assert shares(small, num_workers=2, persistent_workers=True)  # outgrows one cache
    assert not shares(ds, num_workers=2, persistent_workers=True)  # fits: whole batches
    assert not shares(ds, num_workers=0)
    assert not shares(ds, num_workers=1)
    assert not shares(ds, num_workers=2, worker_type="thread")  # one cache for all threads
    assert shares(fastload.Mix([ds, ds]), num_workers=2)
    assert not shares(ds, num_workers=2, transform=lambda s: s)
    rows = np.random.default_rng(0).integers(0, 65535, (64, 512), dtype=np.uint16)
    with fastload.Writer(
        tmp_path / "raw", {"tokens": "uint16[512]"}, block_size=8192, compression="zstd"
    ) as w:  # random tokens: left raw
        for row in rows:
            w.write({"tokens": row})
    assert not shares(Dataset(tmp_path / "raw"), num_workers=2)


def test_decompressed_blocks_are_counted(compressed):
    path, _ = compressed
    ds = Dataset(path)
    blocks = sum(s.blocks for s in ds.shards)
    loader = fastload.DataLoader(ds, batch_size=16)
    for _ in range(2):
        list(loader)
    assert loader.stats()["decompressed_blocks"] == blocks  # kept: the 2nd epoch is free
    tiny = fastload.DataLoader(Dataset(path, block_cache=0), batch_size=16)
    list(tiny)
    assert tiny.stats()["decompressed_blocks"] == 30 * 2  # 2 batches a block, none kept


def test_a_warning_counts_the_block_caches_of_workers_that_share_blocks_out(compressed):
    path, _ = compressed  # 480 KiB decompressed
    ds = Dataset(path, block_cache="192KiB")
    with pytest.warns(UserWarning, match=r"more than the 192.0 KiB each process keeps"):
        fastload.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, worker_type="thread")
    with pytest.warns(UserWarning, match=r"more than the 384.0 KiB 2 worker processes keep"):
        fastload.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "fastload")  # 3 x 192 KiB hold it
        fastload.DataLoader(ds, batch_size=8, shuffle=True, num_workers=3)


def test_a_corrupt_block_read_by_shared_out_workers_raises_naming_it(compressed, tmp_path):
    import shutil

    from fastload.errors import CorruptRecordError
    from tests.format.formattools import parse_shard

    path, rows = compressed
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    shard = next(bad.glob("*.fls"))
    data = bytearray(shard.read_bytes())
    block = parse_shard(bytes(data))["blocks"][12]  # records 96..103
    data[block["offset"] + block["stored_size"] // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    loader = fastload.DataLoader(Dataset(bad), batch_size=16, num_workers=2)
    assert loader._by_block
    for _ in range(2):  # and the loader still works for another epoch, to the same point
        delivered = []
        with pytest.raises(CorruptRecordError) as info:
            for b in loader:
                delivered.append(b["tokens"].numpy())
        assert "block 12" in str(info.value) and "records 96..103" in str(info.value)
        assert "Caught CorruptRecordError in fastload worker" in str(info.value)
        np.testing.assert_array_equal(np.concatenate(delivered), rows[:96])


@pytest.mark.parametrize("in_order", [True, False])
def test_resuming_mid_epoch_with_shared_out_blocks(compressed, in_order):
    path, rows = compressed

    def loader(workers: int = 2) -> fastload.DataLoader:
        return fastload.DataLoader(
            Dataset(path),
            batch_size=16,
            shuffle=True,
            seed=5,
            num_workers=workers,
            in_order=in_order,
        )

    first = loader()
    assert first._by_block
    it = iter(first)
    head = [next(it)["tokens"] for _ in range(11)]
    state = first.state_dict()
    del it
    second = loader()
    second.load_state_dict(state)
    got = torch.cat(head + [b["tokens"] for b in second]).numpy()
    if in_order:  # the very order of one process
        np.testing.assert_array_equal(got, torch.cat([b["tokens"] for b in loader(0)]).numpy())
    else:  # batches as they came: every row once
        assert sorted(map(bytes, got)) == sorted(map(bytes, rows))


@pytest.mark.parametrize(
    "variable", [None, {"ids": fastload.Packed()}, {"ids": fastload.Pad(32, value=-1)}]
)
def test_workers_share_out_compressed_text_blocks(tmp_path, variable):
    """Records with listed fields (text, token id lists) in zstd blocks: the workers share
    each batch out by block and the consumer puts every share's values back in their rows."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta"]
    with fastload.Writer(
        tmp_path / "t", {"i": "int64", "text": "str", "ids": "int64[?]"}, block_size=2000
    ) as w:
        for i in range(400):
            n = int(rng.integers(0, 30))
            w.write(
                {
                    "i": i,
                    "text": " ".join(words[(i + k) % 4] for k in range(n)),
                    "ids": np.arange(n, dtype=np.int64) + i,
                }
            )
    ds = Dataset(tmp_path / "t")
    blocks = sum(s.blocks for s in ds.shards)
    assert blocks > 10 and ds.manifest.bytes < 0.5 * sum(s.raw_bytes for s in ds.shards)

    def epoch(workers: int) -> tuple[list, fastload.DataLoader]:
        loader = fastload.DataLoader(
            Dataset(tmp_path / "t"),
            batch_size=16,
            shuffle=True,
            seed=2,
            num_workers=workers,
            variable=variable,
        )
        return list(loader), loader

    alone, _ = epoch(0)
    shared, loader = epoch(2)
    assert loader._by_block
    for got, want in zip(shared, alone):
        assert list(got) == list(want)
        for k in got:
            if isinstance(want[k], torch.Tensor):
                assert torch.equal(got[k], want[k])
            else:
                assert (
                    got[k] == want[k]
                    if k == "text"
                    else all(np.array_equal(a, b) for a, b in zip(got[k], want[k]))
                )
    assert loader.stats()["decompressed_blocks"] == blocks


def test_a_record_too_long_for_its_pad_raises_from_a_shared_out_batch(tmp_path):
    with fastload.Writer(tmp_path / "p", {"ids": "int64[?]"}, block_size=500) as w:
        for i in range(200):
            w.write({"ids": np.zeros(i % 12, np.int64)})  # zstd packs zeros
    loader = fastload.DataLoader(
        Dataset(tmp_path / "p"),
        batch_size=16,
        num_workers=2,
        variable={"ids": fastload.Pad(10)},
    )
    assert loader._by_block
    with pytest.raises(
        ValueError,
        match=r"field 'ids' of dataset record 11 has 11 items, "
        r"more than Pad\(length=10\)",
    ):
        list(loader)
