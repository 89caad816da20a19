"""Batches finished on the CPU (no CUDA device): ``ImageDecode(dtype=..., normalize=...)``
images and ``TokenDecode`` tokens, compared to a numpy reference of decode + normalize and of
the token shift (float32 within 1e-5 of the exact value, float16 and bfloat16 within one unit
in the last place). Both places the loader can finish in (the workers, into the slab; the
training process, into buffers of its own: layout.py's choice) give the same results."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import fastload
import fastload.loader.layout as layout_module
from fastload.decode import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_batch_into,
    draw_batch_params,
    image_rngs,
)

from .loadertools import damage

pytestmark = pytest.mark.timeout(180)

N = 70
BATCH = 32  # shared by two workers; the last batch (6) is filled whole
SIZE = 24
SCALE, RATIO = (0.25, 0.7), (0.6, 1.5)  # not the defaults: the loader must pass them on
MANTISSA = {torch.float16: 10, torch.bfloat16: 7}


def jpeg(i: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(i)
    h, w = 40 + 7 * (i % 5), 50 + 11 * (i % 4)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    f = io.BytesIO()
    Image.fromarray(pixels).save(f, "JPEG", quality=90)
    return f.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    from PIL import Image

    w, h = Image.open(io.BytesIO(data)).size
    return h, w


def tokens_of(i: int, length: int, dtype=np.uint16) -> np.ndarray:
    """Record ``i``'s tokens: its own base (past 2**16 for uint32 rows) plus a short cycle,
    so that rows compress (a zstd dataset's blocks must be worth decompressing)."""
    top = 2**16 - 8 if dtype == np.uint16 else 2**32 - 8
    base = (i * 1_000_003) % top
    return (base + np.arange(length, dtype=np.uint64) % 7).astype(dtype)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    path = tmp_path_factory.mktemp("finish") / "ds"
    with fastload.Writer(path, {"image": "image", "label": "int64"}) as w:
        for i in range(N):
            w.write({"image": jpeg(i), "label": i})
    return path


@pytest.fixture(params=["workers", "consumer"])
def place(request, monkeypatch):
    """Where the CPU finishing runs (both are kept and must agree)."""
    here = request.param == "workers"
    monkeypatch.setattr(layout_module, "IMAGES_FINISHED_IN_WORKERS", here)
    monkeypatch.setattr(layout_module, "TOKENS_FINISHED_IN_WORKERS", here)
    return request.param


def epoch(path, spec, num_workers=2, seed=3, **kw) -> list[dict]:
    """One epoch with torch's own order from a seeded generator: batch j's augmentation seed
    is (base seed, j)."""
    kw.setdefault("batch_size", BATCH)
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(
            ds,
            num_workers=num_workers,
            decode={"image": spec} if isinstance(spec, fastload.ImageDecode) else spec,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )
        return [dict(b) for b in loader]


def base_seed(seed: int) -> int:
    g = torch.Generator().manual_seed(seed)
    return int(torch.empty((), dtype=torch.int64).random_(generator=g))


def reference_pixels(labels, seed: tuple, spec) -> np.ndarray:
    """decode_batch_into's uint8 HWC pixels of these records: each image's crop and flip drawn
    from its own generator keyed by the batch's seed, the field (0) and its place."""
    data = [jpeg(int(i)) for i in labels]
    hs, ws = zip(*(size_of(d) for d in data))
    out = np.zeros((len(data), *spec.hw, 3), np.uint8)
    params = None
    if spec.train:
        rngs = image_rngs((*seed, 0), range(len(data)))
        params = draw_batch_params(
            hs, ws, spec.hw, train=True, rngs=rngs, scale=spec.scale, ratio=spec.ratio
        )
    decode_batch_into(data, hs, ws, out, train=spec.train, params=params)
    return out


def normalized(pixels: np.ndarray, mean, std, layout: str) -> np.ndarray:
    """The exact value of ``(x / 255 - mean) / std`` (float64), in ``layout``."""
    x = (pixels.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
    return x if layout == "HWC" else x.transpose(0, 3, 1, 2)


def assert_close(got: torch.Tensor, exact: np.ndarray) -> None:
    """float32 within 1e-5 of the exact value; half types within one unit in the last place."""
    assert tuple(got.shape) == exact.shape and got.is_contiguous()
    value = got.double().numpy()
    err = np.abs(value - exact)
    if got.dtype == torch.float32:
        assert err.max() <= 1e-5, err.max()
        return
    bits = MANTISSA[got.dtype]
    ulp = np.exp2(np.floor(np.log2(np.maximum(np.abs(exact), 2.0**-14))) - bits)
    assert (err <= ulp).all(), float((err / ulp).max())


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["CHW", "HWC"])
def test_images_are_decoded_and_normalized_as_the_numpy_reference(images, place, dtype, layout):
    spec = fastload.ImageDecode(
        SIZE,
        train=True,
        scale=SCALE,
        ratio=RATIO,
        normalize="imagenet",
        dtype=dtype,
        layout=layout,
    )
    got = epoch(images, spec)
    assert [len(b["label"]) for b in got] == [BATCH, BATCH, N - 2 * BATCH]
    base = base_seed(3)
    for j, b in enumerate(got):
        image = b["image"]
        assert image.dtype == dtype
        assert image.shape[1:] == ((3, SIZE, SIZE) if layout == "CHW" else (SIZE, SIZE, 3))
        pixels = reference_pixels(b["label"], (base, j), spec)
        assert_close(image, normalized(pixels, IMAGENET_MEAN, IMAGENET_STD, layout))
    assert sorted(torch.cat([b["label"] for b in got]).tolist()) == list(range(N))


@pytest.mark.parametrize(
    "normalize,mean,std",
    [
        (None, (0.0,) * 3, (1.0,) * 3),
        (((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
    ],
)
def test_eval_crops_and_other_normalizations(images, place, normalize, mean, std):
    spec = fastload.ImageDecode(SIZE, train=False, normalize=normalize, dtype=torch.float32)
    got = epoch(images, spec, num_workers=0)
    for b in got:
        exact = normalized(reference_pixels(b["label"], (), spec), mean, std, "CHW")
        assert_close(b["image"], exact)
    if normalize is None:
        values = torch.cat([b["image"].flatten() for b in got])
        assert 0.0 <= values.min() < 0.1 and 0.9 < values.max() <= 1.0


@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "thread"), (3, "process")])
def test_the_workers_do_not_change_the_finished_images(images, place, num_workers, worker_type):
    spec = fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.bfloat16)
    want = epoch(images, spec, num_workers=1)
    got = epoch(images, spec, num_workers=num_workers, worker_type=worker_type)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["image"], b["image"])


def test_uint8_pixels_finished_by_numpy_are_the_finished_batches(images, place):
    """The loader's own uint8 output, normalized by numpy, is its float output (the planned
    order and the share of a batch among workers included)."""
    kw = dict(seed=11, generator=None)
    plain = fastload.ImageDecode(SIZE, layout="CHW")
    spec = fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.float16)
    with fastload.Dataset(images) as ds:
        a = fastload.DataLoader(ds, batch_size=BATCH, num_workers=2, decode={"image": plain}, **kw)
        b = fastload.DataLoader(ds, batch_size=BATCH, num_workers=2, decode={"image": spec}, **kw)
        pairs = list(zip(a, b))
    assert len(pairs) == math.ceil(N / BATCH)
    for x, y in pairs:
        assert torch.equal(x["label"], y["label"])
        exact = normalized(
            x["image"].permute(0, 2, 3, 1).numpy(), IMAGENET_MEAN, IMAGENET_STD, "CHW"
        )
        assert_close(y["image"], exact)


def test_bad_images_are_skipped_with_their_rows(tmp_path, place):
    path = tmp_path / "bad"
    with fastload.Writer(path, {"image": "image", "label": "int64"}) as w:
        for i in range(40):
            data = jpeg(i)
            w.write({"image": data[: len(data) // 3] if i in (5, 33) else data, "label": i})
    plain = fastload.ImageDecode(SIZE, layout="CHW")
    spec = fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.bfloat16)
    kw = dict(batch_size=16, num_workers=2, seed=1, bad_samples="skip")
    with fastload.Dataset(path) as ds:
        want = list(fastload.DataLoader(ds, decode={"image": plain}, **kw))
        loader = fastload.DataLoader(ds, decode={"image": spec}, **kw)
        got = list(loader)
        assert loader.stats()["skipped_samples"] == 2
    labels = torch.cat([b["label"] for b in got]).tolist()
    assert sorted(labels) == sorted(set(range(40)) - {5, 33})
    for x, y in zip(want, got):
        assert torch.equal(x["label"], y["label"])
        pixels = x["image"].permute(0, 2, 3, 1).numpy()
        assert_close(y["image"], normalized(pixels, IMAGENET_MEAN, IMAGENET_STD, "CHW"))


def test_batches_held_keep_their_values(tmp_path, place):
    """Every batch of two epochs kept: the buffers they are over (slabs, or the training
    process's own, here large enough to be reused) are not reused while they are held."""
    path = tmp_path / "big"
    with fastload.Writer(path, {"image": "image", "label": "int64"}) as w:
        for i in range(96):
            w.write({"image": jpeg(i), "label": i})
    spec = fastload.ImageDecode(64, normalize="imagenet", dtype=torch.float32)  # 1.5 MB a batch
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=32, num_workers=2, seed=4, decode={"image": spec}
        )
        assert (loader.layout.finished_in_workers == {"image"}) == (place == "workers")
        held = [b for e in range(2) for b in _epoch_of(loader, e)]
        copies = [b["image"].clone() for b in held]
        # the same epochs again: the pools grow, nothing held is overwritten
        again = [b for e in range(2) for b in _epoch_of(loader, e)]
    for b, c in zip(held, copies):
        assert torch.equal(b["image"], c)
    for a, b in zip(again, held):
        assert torch.equal(a["image"], b["image"])  # same seed, same epochs


def _epoch_of(loader, e: int) -> list:
    loader.set_epoch(e)
    return list(loader)


def test_pin_memory_without_a_gpu_still_finishes(images, place):
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU behaviour")
    spec = fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="pin_memory"):
        pinned = epoch(images, spec, pin_memory=True)
    for a, b in zip(pinned, epoch(images, spec), strict=True):
        assert torch.equal(a["image"], b["image"])


# ----------------------------------------------------------------------------- tokens


def token_dataset(path, dtype="uint16", length=33, n=N, compression="none"):
    np_dtype = np.uint16 if dtype == "uint16" else np.uint32
    with fastload.Writer(
        path,
        {"tokens": f"{dtype}[{length}]", "i": "int64"},
        compression=compression,
        block_size=2048,
    ) as w:
        for i in range(n):
            w.write({"tokens": tokens_of(i, length, np_dtype), "i": i})
    return path


def check_tokens(batches, spec, length=33, dtype=np.uint16):
    out = spec.dtype
    for b in batches:
        rows = np.stack([tokens_of(i, length, dtype) for i in b["i"].tolist()]).astype(np.int64)
        if spec.shift:
            assert list(b) == ["tokens", "tokens_targets", "i"]
            assert b["tokens"].dtype == b["tokens_targets"].dtype == out
            assert np.array_equal(b["tokens"].numpy(), rows[:, :-1])
            assert np.array_equal(b["tokens_targets"].numpy(), rows[:, 1:])
        else:
            assert list(b) == ["tokens", "i"] and b["tokens"].dtype == out
            assert np.array_equal(b["tokens"].numpy(), rows)


@pytest.mark.parametrize(
    "spec",
    [
        fastload.TokenDecode(),
        fastload.TokenDecode(dtype=torch.int32),
        fastload.TokenDecode(shift=False),
    ],
)
@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "process"), (2, "thread")])
def test_token_rows_are_widened_and_shifted(tmp_path, place, spec, num_workers, worker_type):
    path = token_dataset(tmp_path / "tokens")
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=16,
            shuffle=True,
            seed=0,
            num_workers=num_workers,
            worker_type=worker_type,
            decode={"tokens": spec},
        )
        assert (set(loader.layout.rows) == {"tokens"}) == (place == "workers")
        got = list(loader)
    assert [len(b["i"]) for b in got] == [16] * (N // 16) + [N % 16]
    assert got[0]["tokens"].shape == (16, 32 if spec.shift else 33)
    check_tokens(got, spec)
    assert sorted(torch.cat([b["i"] for b in got]).tolist()) == list(range(N))


def test_uint32_tokens_and_a_compressed_dataset_shared_out_by_block(tmp_path, place):
    """zstd blocks read by two worker processes are shared out by block (each worker fills
    the rows of its blocks, scattered in the batch); those rows are finished all the same."""
    path = token_dataset(tmp_path / "wide", dtype="uint32", n=300, compression="zstd")
    spec = fastload.TokenDecode()
    # No decompressed copies on disk: with them, workers read whole batches instead.
    with fastload.Dataset(path, cache_dir=False) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=32, shuffle=True, seed=2, num_workers=2, decode={"tokens": spec}
        )
        assert loader._by_block  # the split this test is about
        got = list(loader)
    check_tokens(got, spec, dtype=np.uint32)
    assert sorted(torch.cat([b["i"] for b in got]).tolist()) == list(range(300))


def test_tokens_and_images_in_one_batch(tmp_path, place):
    path = tmp_path / "both"
    with fastload.Writer(path, {"image": "image", "tokens": "uint16[33]", "i": "int64"}) as w:
        for i in range(40):
            w.write({"image": jpeg(i), "tokens": tokens_of(i, 33), "i": i})
    image = fastload.ImageDecode(SIZE, train=False, normalize="imagenet", dtype=torch.float32)
    spec = fastload.TokenDecode()
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=16, num_workers=2, decode={"image": image, "tokens": spec}
        )
        got = list(loader)
    for b in got:
        assert list(b) == ["image", "tokens", "tokens_targets", "i"]
        exact = normalized(reference_pixels(b["i"], (), image), IMAGENET_MEAN, IMAGENET_STD, "CHW")
        assert_close(b["image"], exact)
    check_tokens([{k: v for k, v in b.items() if k != "image"} for b in got], spec)


def test_records_that_fail_their_checksum_are_skipped_before_finishing(tmp_path, place):
    path = damage(token_dataset(tmp_path / "good"), tmp_path / "bad", records=[3, 40])
    spec = fastload.TokenDecode()
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=16, num_workers=2, bad_samples="skip", decode={"tokens": spec}
        )
        got = list(loader)
        assert loader.stats()["skipped_samples"] == 2
    check_tokens(got, spec)
    assert sorted(torch.cat([b["i"] for b in got]).tolist()) == sorted(set(range(N)) - {3, 40})


def test_spawned_workers_finish_alike(images):
    """Workers of another start method get the specs pickled (dtype, normalize, crops)."""
    spec = fastload.ImageDecode(SIZE, scale=SCALE, normalize="imagenet", dtype=torch.bfloat16)
    want = epoch(images, spec, num_workers=0)
    got = epoch(images, spec, num_workers=2, multiprocessing_context="spawn")
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a["label"], b["label"]) and torch.equal(a["image"], b["image"])
