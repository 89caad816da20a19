"""Image fields decoded (and augmented) in the workers: the pixels are the decoder's, each
image's augmentation depends only on its batch and place in it, never on which worker (or how
many) filled it. Batches of 32 or more images are shared among the workers (each decodes a
share of every batch); smaller ones, and the last, smaller batch, are filled whole."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import fastload
from fastload.decode import decode_batch_into, draw_batch_params, image_rngs

pytestmark = pytest.mark.timeout(120)

N = 80
BATCH = 32  # shared by two workers (16 images each); the last batch (16) is not
SIZE = 24


def jpeg(i: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(i)
    h, w = 40 + 7 * (i % 5), 50 + 11 * (i % 4)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    f = io.BytesIO()
    Image.fromarray(pixels).save(f, "JPEG", quality=90)
    return f.getvalue()


@pytest.fixture(scope="module")
def images_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "ds"
    with fastload.Writer(
        path, {"image": "image", "label": "int64", "name": "str"}, shard_size=N * 2000 // 3
    ) as w:
        for i in range(N):
            w.write({"image": jpeg(i), "label": i, "name": f"img{i}"})
    return path


def epoch(path, num_workers: int, worker_type: str = "process", **kw) -> list[dict]:
    kw.setdefault("decode", {"image": fastload.ImageDecode(SIZE, train=True)})
    with fastload.Dataset(path) as ds:
        kw.setdefault("batch_size", BATCH)
        loader = fastload.DataLoader(ds, num_workers=num_workers, worker_type=worker_type, **kw)
        return [
            {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            for b in loader
        ]


def expected_pixels(labels, seed: tuple, layout: str = "HWC") -> np.ndarray:
    """What decode_batch_into writes for these records, each image's crop and flip drawn
    from its own generator keyed by the batch's seed, the field (0) and its place."""
    images = [jpeg(int(i)) for i in labels]
    from PIL import Image

    sizes = [Image.open(io.BytesIO(b)).size for b in images]
    hs, ws = [h for _, h in sizes], [w for w, _ in sizes]
    shape = (len(images), SIZE, SIZE, 3) if layout == "HWC" else (len(images), 3, SIZE, SIZE)
    params = draw_batch_params(
        hs, ws, (SIZE, SIZE), train=True, rngs=image_rngs((*seed, 0), range(len(images)))
    )
    out = np.zeros(shape, np.uint8)
    decode_batch_into(images, hs, ws, out, train=True, params=params, layout=layout)
    return out


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["image"], y["image"])
        and torch.equal(x["label"], y["label"])
        and x["name"] == y["name"]
        for x, y in zip(a, b)
    )


@pytest.mark.parametrize("num_workers,worker_type", [(2, "process"), (3, "process"), (2, "thread")])
def test_worker_count_and_type_do_not_change_the_pixels(images_path, num_workers, worker_type):
    reference = epoch(images_path, 0, seed=5, shuffle=True)
    got = epoch(images_path, num_workers, worker_type, seed=5, shuffle=True)
    assert same(reference, got)
    labels = [int(i) for b in got for i in b["label"]]
    assert sorted(labels) == list(range(N))
    assert [b["name"] for b in got] == [[f"img{i}" for i in b["label"].tolist()] for b in got]
    assert got[0]["image"].shape == (BATCH, SIZE, SIZE, 3)
    assert got[0]["image"].dtype == torch.uint8 and len(got[-1]["label"]) == N % BATCH


def test_pixels_are_the_decoders_with_the_batch_seed(images_path):
    """Without a planned order the batch's seed is (base seed, batch number): recompute every
    batch (shared by both workers but the last) from the torch generator."""
    got = epoch(images_path, 2, generator=torch.Generator().manual_seed(3), shuffle=True)
    base = int(
        torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(3))
    )
    for j in range(len(got)):
        assert np.array_equal(got[j]["image"].numpy(), expected_pixels(got[j]["label"], (base, j)))


def test_chw_and_eval_layouts_through_shared_first_batches(images_path):
    for spec in (
        fastload.ImageDecode(SIZE, train=True, layout="CHW"),
        fastload.ImageDecode(SIZE, train=False),
    ):
        reference = epoch(images_path, 0, seed=1, decode={"image": spec})
        got = epoch(images_path, 2, seed=1, decode={"image": spec})
        assert same(reference, got)
        assert got[0]["image"].shape == (BATCH, *spec.shape)


def test_persistent_workers_after_a_break(images_path, no_leaks):
    """Leaving an epoch right after its first batch (shares of the next ones may still be out
    with a worker) frees every slab exactly once and the next epochs are whole and the same."""
    with fastload.Dataset(images_path) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=BATCH,
            num_workers=2,
            seed=2,
            shuffle=True,
            persistent_workers=True,
            decode={"image": fastload.ImageDecode(SIZE)},
        )
        for _e in range(3):
            loader.set_epoch(0)
            it = iter(loader)
            first = next(it)["label"].clone()
            del it
        loader.set_epoch(0)
        whole = [b["label"].clone() for b in loader]
        assert torch.equal(whole[0], first)
        assert sorted(torch.cat(whole).tolist()) == list(range(N))
        free = list(loader._slabs._free)
        assert len(free) == len(set(free)) == len(loader._slabs.arrays)
        loader.close()


def test_a_bad_image_names_its_record_and_the_worker_that_decoded_it(tmp_path, no_leaks):
    """Record 20 is in the second share of the first batch: the second worker raises, naming
    the record; the loader stops cleanly and the other batches load."""
    path = tmp_path / "bad"
    with fastload.Writer(path, {"image": "image", "label": "int64"}) as w:
        for i in range(2 * BATCH):
            w.write({"image": jpeg(i) if i != 20 else jpeg(i)[:200], "label": i})  # no scan data
    decode = {"image": fastload.ImageDecode(SIZE)}
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(ds, batch_size=BATCH, num_workers=2, decode=decode)
        with pytest.raises(Exception, match=r"(?s)fastload worker 1 .*dataset record 20"):
            next(iter(loader))
        later = fastload.DataLoader(
            ds, batch_size=BATCH, num_workers=2, decode=decode, sampler=range(BATCH, 2 * BATCH)
        )
        assert [b["label"].tolist() for b in later] == [list(range(BATCH, 2 * BATCH))]


def test_shared_batches_count_once(images_path):
    """Batches of 32 are shared by both workers, the last (16) is not; each shared batch's
    result merges its two shares: every sample delivered and counted once."""
    with fastload.Dataset(images_path) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=BATCH, num_workers=2, decode={"image": fastload.ImageDecode(SIZE)}
        )
        assert loader._shares(BATCH) == 2 and loader._shares(N % BATCH) == 1
        batches = [b["label"].clone() for b in loader]
        assert torch.cat(batches).tolist() == list(range(N))
        stats = loader.stats()
        assert stats["samples"] == N and stats["batches"] == len(batches)


# ------------------------------------------------------------------ bad images, skipped

BAD = (5, 6, 40)  # two in a row in the first batch's first share, one in the second batch


@pytest.fixture(scope="module")
def bad_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-images") / "ds"
    with fastload.Writer(path, {"image": "image", "label": "int64", "name": "str"}) as w:
        for i in range(N):
            image = jpeg(i)[:200] if i in BAD else jpeg(i)  # header only: does not decode
            w.write({"image": image, "label": i, "name": f"img{i}"})
    return path


@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "process"), (2, "thread")])
def test_skip_drops_bad_images_and_counts_them(images_path, bad_path, num_workers, worker_type):
    """bad_samples='skip': each bad image's sample is dropped from its batch (the rest of the
    batch moves up, every field), counted and logged; the good samples are exactly what the
    same records give where nothing fails."""
    good = {
        int(b["label"][k]): (b["image"][k], b["name"][k])
        for b in epoch(images_path, 0, seed=3)
        for k in range(len(b["label"]))
    }
    import logging

    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("fastload").addHandler(handler)
    try:
        with fastload.Dataset(bad_path) as ds:
            loader = fastload.DataLoader(
                ds,
                batch_size=BATCH,
                num_workers=num_workers,
                worker_type=worker_type,
                bad_samples="skip",
                seed=3,
                decode={"image": fastload.ImageDecode(SIZE)},
            )
            batches = list(loader)
            stats = loader.stats()
    finally:
        logging.getLogger("fastload").removeHandler(handler)
    assert [len(b["label"]) for b in batches] == [BATCH - 2, BATCH - 1, N - 2 * BATCH]
    labels = [int(i) for b in batches for i in b["label"]]
    assert labels == [i for i in range(N) if i not in BAD]
    for b in batches:
        assert len(b["image"]) == len(b["name"]) == len(b["label"])
        for k, i in enumerate(b["label"].tolist()):
            assert torch.equal(b["image"][k], good[i][0]) and b["name"][k] == good[i][1]
    assert stats["skipped_samples"] == len(BAD) and stats["samples"] == N - len(BAD)
    assert len(logged) == 1  # at most one warning every 10 s
    assert "skipped 2 bad sample(s)" in logged[0] and "dataset record 6" in logged[0]


def test_skipping_stops_when_the_budget_is_spent(bad_path):
    decode = {"image": fastload.ImageDecode(SIZE)}
    with fastload.Dataset(bad_path) as ds:
        in_a_row = fastload.SkipBadSamples(max_consecutive=1)
        loader = fastload.DataLoader(ds, batch_size=BATCH, bad_samples=in_a_row, decode=decode)
        with pytest.raises(
            fastload.TooManyBadSamplesError,
            match=r"2 bad samples in a row .* 2 of 32 samples skipped",
        ):
            next(iter(loader))
        rate = fastload.SkipBadSamples(max_fraction=0.04, probation=40)
        loader = fastload.DataLoader(
            ds, batch_size=BATCH, num_workers=2, bad_samples=rate, decode=decode
        )
        it = iter(loader)
        next(it)  # 2 of 32: under probation
        with pytest.raises(fastload.TooManyBadSamplesError, match=r"4.7% of the samples"):
            next(it)  # 3 of 64 > 4%
        # the default policy still raises at the first bad image
        with pytest.raises(Exception, match="dataset record 5"):
            next(iter(fastload.DataLoader(ds, batch_size=BATCH, decode=decode)))


def test_bad_samples_argument_is_checked(images_path):
    with fastload.Dataset(images_path) as ds:
        with pytest.raises(ValueError, match="bad_samples must be"):
            fastload.DataLoader(
                ds, bad_samples="ignore", decode={"image": fastload.ImageDecode(SIZE)}
            )
        with pytest.raises(ValueError, match="max_fraction"):
            fastload.SkipBadSamples(max_fraction=2)


def _to_chw_float(sample: dict) -> dict:
    """The usual ToTensor + Normalize after the decode: uint8 HWC -> float32 CHW."""
    image = torch.from_numpy(sample["image"]).permute(2, 0, 1).float().div(255)
    return {"image": (image - 0.5) / 0.25, "label": sample["label"], "name": sample["name"]}


@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "process"), (2, "thread")])
def test_a_transform_after_the_decode_sees_the_decoded_pixels(
    images_path, num_workers, worker_type
):
    """transform= gets each decoded image (the same crop and flip as without it, batches
    shared among the workers or not) and its outputs become the batch."""
    plain = epoch(images_path, num_workers, worker_type, seed=3)
    got = epoch(images_path, num_workers, worker_type, seed=3, transform=_to_chw_float)
    assert [len(b["label"]) for b in got] == [len(b["label"]) for b in plain]
    for a, b in zip(got, plain):
        assert a["image"].dtype == torch.float32 and a["image"].shape[1:] == (3, SIZE, SIZE)
        want = (b["image"].permute(0, 3, 1, 2).float().div(255) - 0.5) / 0.25
        assert torch.equal(a["image"], want)
        assert torch.equal(a["label"], b["label"]) and a["name"] == b["name"]


def test_variable_length_fields_of_shared_image_batches(tmp_path):
    """Batches of images shared among workers: each share sends its rows' token lists, the
    consumer pads and packs the whole batch from them, as from one worker's whole batch."""
    path = tmp_path / "captions"
    with fastload.Writer(path, {"image": "image", "label": "int64", "caption": "int32[?]"}) as w:
        for i in range(N):
            w.write({"image": jpeg(i), "label": i, "caption": np.arange(i % 9, dtype=np.int32) + i})
    variable = {"caption": fastload.Pad(value=-1)}
    shared = epoch(path, 2, variable=variable)
    alone = epoch(path, 0, variable=variable)
    for got, want in zip(shared, alone):
        for k in ("label", "caption", "caption_lengths"):
            assert torch.equal(got[k], want[k])
    for b in shared:
        for row, i in enumerate(b["label"].tolist()):
            n = i % 9
            assert b["caption_lengths"][row] == n
            assert b["caption"][row, :n].tolist() == list(range(i, i + n))
            assert (b["caption"][row, n:] == -1).all()
    packed = epoch(path, 2, variable={"caption": fastload.Packed()})
    for b in packed:
        want = [list(range(i, i + i % 9)) for i in b["label"].tolist()]
        offsets = b["caption_offsets"].tolist()
        assert [b["caption"][a:z].tolist() for a, z in zip(offsets, offsets[1:])] == want


def photo_jpeg(i: int) -> bytes:
    """A 176x248 picture: enough MCUs that most crops leave some out (the entropy index)."""
    from PIL import Image

    y, x = np.mgrid[0:176, 0:248]
    pixels = np.stack([(x * 2 + 9 * i) % 256, (y * 3) % 256, (x * y // 40 + i) % 256], -1)
    f = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(f, "JPEG", quality=88)
    return f.getvalue()


def test_jpegs_with_their_entropy_index_load_as_without(tmp_path):
    """The index changes how much of each JPEG is decoded, never a pixel of a batch."""
    paths = []
    for jpeg_index in (True, False):
        path = tmp_path / f"index-{jpeg_index}"
        with fastload.Writer(
            path, {"image": "image", "label": "int64", "name": "str"}, jpeg_index=jpeg_index
        ) as w:
            for i in range(40):
                w.write({"image": photo_jpeg(i), "label": i, "name": f"img{i}"})
        paths.append(path)
    with fastload.Dataset(paths[0]) as a, fastload.Dataset(paths[1]) as b:
        assert a[0]["image"].entropy_index is not None and b[0]["image"].entropy_index is None
    kw = dict(batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    indexed = epoch(paths[0], 2, **kw)
    kw["generator"] = torch.Generator().manual_seed(3)
    assert same(indexed, epoch(paths[1], 2, **kw))
    assert sum(len(b["label"]) for b in indexed) == 40
