"""bad_samples='skip' over records that fail their checksum (docs/reliability.md A8, B2, E8): each
is dropped from its batch and counted, the rest of the batch is exactly what an intact dataset
gives, and with a planned order the counts travel in state_dict."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import fastload
from fastload.errors import CorruptRecordError

from .loadertools import N, check_batch, damage, write_dataset

pytestmark = pytest.mark.timeout(120)

BAD = (3, 4, 50)  # two in a row in the first batch, one later
# Over the default's 1% once 100 samples are seen (a whole block of records is ~9% here)
LENIENT = fastload.SkipBadSamples(max_fraction=0.25)


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("intact") / "ds")


@pytest.fixture(scope="module")
def damaged(intact, tmp_path_factory) -> Path:
    return damage(intact, tmp_path_factory.mktemp("damaged") / "ds", BAD)


@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "process"), (2, "thread")])
def test_corrupt_records_are_skipped_and_counted(damaged, num_workers, worker_type):
    with fastload.Dataset(damaged) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=8, num_workers=num_workers, worker_type=worker_type, bad_samples="skip"
        )
        batches = list(loader)
        stats = loader.stats()
    assert len(batches) == len(loader) == -(-N // 8)  # a batch per step, however short
    assert [len(b["i"]) for b in batches][:2] == [6, 8]
    got = [i for b in batches for i in check_batch(b)]  # every field of every row is right
    assert got == [i for i in range(N) if i not in BAD]
    assert stats["skipped_samples"] == len(BAD) and stats["samples"] == N - len(BAD)
    # the default still raises, naming the shard and the record
    with fastload.Dataset(damaged) as ds:
        with pytest.raises(CorruptRecordError, match=r"record \d+ .*checksum"):
            list(fastload.DataLoader(ds, batch_size=8, num_workers=num_workers))


def _tagged(sample: dict) -> dict:
    if sample["s"] is None:
        raise AssertionError("the transform was given a skipped record")
    return {"i": sample["i"], "tag": f"t{int(sample['i'])}"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skipped_records_are_not_transformed(damaged, num_workers):
    with fastload.Dataset(damaged) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=8, num_workers=num_workers, bad_samples="skip", transform=_tagged
        )
        batches = list(loader)
    got = [i for b in batches for i in b["i"].tolist()]
    assert got == [i for i in range(N) if i not in BAD]
    assert [t for b in batches for t in b["tag"]] == [f"t{i}" for i in got]


@pytest.mark.parametrize("width, lost", [(13, BAD), (4, (0, 1, 2, 3, 4, 5, 6, 7, 48, 49, 50, 51))])
def test_fixed_fields_only_through_the_batched_gather(tmp_path, width, lost):
    """Fixed-size fields only: the batch read that checks and copies in one call finds the
    corrupt record, and the rows around it come from the general path, one by one. Records of
    34 bytes have a checksum each; records of 16 share one per 4 (blocks of 288 bytes hold 18
    of them): a damaged one is skipped with the records of its group."""
    with fastload.Writer(
        tmp_path / "ds",
        {"i": "int64", "t": f"uint16[{width}]"},
        shard_size=900,
        block_size=300,
        compression="none",
    ) as w:
        for i in range(N):
            w.write({"i": i, "t": np.full(width, i, np.uint16)})
    assert fastload.Dataset(tmp_path / "ds").shard_reader(0).index.group == (4 if width == 4 else 1)
    bad = damage(tmp_path / "ds", tmp_path / "bad", BAD)
    with fastload.Dataset(bad) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=16,
            shuffle=True,
            num_workers=2,
            generator=torch.Generator().manual_seed(1),
            bad_samples=LENIENT,
        )
        seen = []
        for b in loader:
            assert torch.equal(b["t"], b["i"][:, None].to(torch.uint16).expand(-1, width))
            seen += b["i"].tolist()
    assert sorted(seen) == [i for i in range(N) if i not in lost]
    assert loader.stats()["skipped_samples"] == len(lost)


def test_a_corrupt_compressed_block_skips_its_records(intact, tmp_path):
    zstd = write_dataset(tmp_path / "zstd", compression="zstd")
    bad = damage(zstd, tmp_path / "bad", records=(40,), whole_block=True)
    with fastload.Dataset(bad) as ds:
        batches = list(fastload.DataLoader(ds, batch_size=10, num_workers=2, bad_samples=LENIENT))
    got = [i for b in batches for i in check_batch(b)]
    lost = sorted(set(range(N)) - set(got))
    assert 40 in lost and len(lost) > 1  # the block's records, around record 40
    assert lost == list(range(lost[0], lost[-1] + 1))
    assert got == [i for i in range(N) if i not in lost]


@pytest.mark.parametrize("copies", [False, True])
def test_a_corrupt_block_of_a_token_dataset_skips_its_records(tmp_path, copies):
    """Workers that share batches out by block (a compressed token dataset, its blocks kept
    in memory), or that read whole batches from decompressed copies on disk: the rows of the
    one bad block are dropped, counted, and every other row is where one process puts it."""
    from tests.format.formattools import write_compressed_rows

    rows = write_compressed_rows(tmp_path / "zstd", 480)  # 60 blocks of 8 rows
    bad = damage(tmp_path / "zstd", tmp_path / "bad", records=(100,), whole_block=True)
    cache_dir = tmp_path / "cache" if copies else False

    def epoch(workers: int) -> tuple[np.ndarray, fastload.DataLoader]:
        loader = fastload.DataLoader(
            fastload.Dataset(bad, cache_dir=cache_dir),
            batch_size=16,
            shuffle=True,
            seed=2,
            num_workers=workers,
            bad_samples=LENIENT,
        )
        return torch.cat([b["tokens"] for b in loader]).numpy(), loader

    alone, _ = epoch(0)
    got, loader = epoch(2)
    assert loader._by_block != copies
    np.testing.assert_array_equal(got, alone)
    lost = Counter(map(bytes, rows)) - Counter(map(bytes, got))
    assert lost == Counter(map(bytes, rows[96:104]))  # record 100's block
    assert loader.stats()["skipped_samples"] == 8 and len(got) == 472


# ------------------------------------------------------------------ images and state_dict

SIZE = 16


def jpeg(i: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(i).integers(0, 256, (30 + i % 7, 40, 3), dtype=np.uint8)
    f = io.BytesIO()
    Image.fromarray(pixels).save(f, "JPEG", quality=90)
    return f.getvalue()


def image_epoch(path: Path, **kw) -> list[dict]:
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=32,
            seed=7,
            **kw,
            decode={"image": fastload.ImageDecode(SIZE, train=True)},
        )
        return [{k: v.clone() for k, v in b.items()} for b in loader]


def test_corrupt_image_records_in_shared_batches(tmp_path):
    """Batches of images shared by two workers: a corrupt record in each share is dropped,
    and every other image is decoded with the crop it gets in an intact dataset."""
    with fastload.Writer(
        tmp_path / "ds", {"image": "image", "label": "int64"}, compression="none"
    ) as w:
        for i in range(64):
            w.write({"image": jpeg(i), "label": i})
    bad = damage(tmp_path / "ds", tmp_path / "bad", records=(5, 20, 21))
    want = {
        int(label): img
        for b in image_epoch(tmp_path / "ds")
        for label, img in zip(b["label"], b["image"])
    }
    batches = image_epoch(bad, num_workers=2, bad_samples="skip")
    assert [len(b["label"]) for b in batches] == [29, 32]
    for b in batches:
        for label, img in zip(b["label"].tolist(), b["image"]):
            assert torch.equal(img, want[label]), label
    assert [int(x) for b in batches for x in b["label"]] == [
        i for i in range(64) if i not in (5, 20, 21)
    ]


def test_skipped_counts_travel_in_state_dict(damaged):
    """E8: the counts come back with the state on the same rank; the batches after it hold
    every good record once, and no skipped one is read again."""

    def loader(ds):
        return fastload.DataLoader(ds, batch_size=8, seed=2, bad_samples=LENIENT)

    with fastload.Dataset(damaged) as ds:
        first = loader(ds)
        it = iter(first)
        head = [i for _ in range(7) for i in check_batch(next(it))]
        state = json.loads(json.dumps(first.state_dict()))
        skipped = first.stats()["skipped_samples"]
        assert state["bad_samples"] == {"rank": 0, "seen": 56, "skipped": skipped}
        assert skipped == 8 * 7 - len(head) > 0

        second = loader(ds)
        second.load_state_dict(state)
        assert second.stats()["skipped_samples"] == skipped
        tail = [i for b in second for i in check_batch(b)]
        assert sorted(head + tail) == [i for i in range(N) if i not in BAD]
        assert second.stats()["skipped_samples"] == len(BAD)

        other_rank = dict(state, bad_samples={**state["bad_samples"], "rank": 1})
        third = loader(ds)
        third.load_state_dict(other_rank)
        assert third.stats()["skipped_samples"] == 0  # another rank's counts are not ours


def test_skip_needs_the_fast_path():
    with pytest.raises(ValueError, match="fastload.Dataset"):
        fastload.DataLoader(list(range(4)), batch_size=2, bad_samples="skip")
