"""The nvImageCodec backend (fastload.decode.nvimgcodec) on nvImageCodec's CPU backend, which
runs without a GPU: the same crops as the CPU decoder for the same seed, and the same pixels
bit for bit where the CPU decoder decodes at full scale; bad images named by index; clear
errors for bad arguments and a missing library. The GPU path: test_nvimgcodec_cuda.py."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastload.decode import (
    DecodeError,
    decode_batch_into,
    draw_batch_params,
    image_rngs,
)
from fastload.decode.nvimgcodec import NvImageCodecDecoder, import_nvimgcodec

from .test_decode import diff, encode, photo, png_variants

pytest.importorskip("nvidia.nvimgcodec", reason="the nvidia-nvimgcodec wheel is not installed")


H, W = 300, 420  # size 224 crops of these decode at full scale on the CPU decoder


@pytest.fixture(scope="module")
def decoder():
    return NvImageCodecDecoder(num_threads=2)


@pytest.fixture(scope="module")
def batch():
    """JPEG (baseline, progressive, 4:4:4, gray, CMYK), PNG and WebP images of one size."""
    data = [
        encode(Image.fromarray(photo(H, W, 0)), "JPEG", quality=90),
        encode(Image.fromarray(photo(H, W, 1)), "JPEG", quality=85, progressive=True),
        encode(Image.fromarray(photo(H, W, 2)), "JPEG", quality=95, subsampling=0),
        encode(Image.fromarray(photo(H, W, 3)).convert("L"), "JPEG", quality=90),
        encode(Image.fromarray(photo(H, W, 4)).convert("CMYK"), "JPEG", quality=90),
        encode(Image.fromarray(photo(H, W, 5)), "PNG"),
        encode(Image.fromarray(photo(H, W, 6)), "WEBP", quality=90),
    ]
    return data, [H] * len(data), [W] * len(data)


def cpu_decoder(images, hs, ws, size, layout="HWC", **kw) -> np.ndarray:
    shape = (len(images), size, size, 3) if layout == "HWC" else (len(images), 3, size, size)
    out = np.zeros(shape, np.uint8)
    decode_batch_into(images, hs, ws, out, layout=layout, **kw)
    return out


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("train", [True, False])
def test_same_pixels_as_the_cpu_decoder_at_full_scale(decoder, batch, layout, train):
    images, hs, ws = batch
    got = decoder.decode_batch(images, hs, ws, size=224, train=train, seed=4, layout=layout)
    assert got.dtype == torch.uint8 and got.device.type == "cpu"
    assert tuple(got.shape) == ((7, 224, 224, 3) if layout == "HWC" else (7, 3, 224, 224))
    want = cpu_decoder(images, hs, ws, 224, layout, train=train, seed=4)
    assert np.array_equal(got.numpy(), want)


def test_same_crops_for_the_same_seed_and_generators(decoder, batch):
    images, hs, ws = batch
    rngs = image_rngs((3, 1), range(7))
    kw = {"scale": (0.2, 0.3), "ratio": (0.9, 1.1)}
    got = decoder.decode_batch(images, hs, ws, size=224, train=True, rngs=rngs, **kw)
    params = draw_batch_params(
        hs, ws, (224, 224), train=True, rngs=image_rngs((3, 1), range(7)), **kw
    )
    assert np.array_equal(got.numpy(), cpu_decoder(images, hs, ws, 224, train=True, params=params))
    again = decoder.decode_batch(images, hs, ws, size=224, train=True, params=params)
    assert torch.equal(got, again)
    other = decoder.decode_batch(images, hs, ws, size=224, train=True, seed=5)
    assert not torch.equal(got, other)


def test_close_to_the_cpu_decoder_where_it_decodes_at_a_reduced_scale(decoder):
    """Small outputs from large crops: the CPU decoder decodes at 1/2..1/8 DCT scale, this
    backend decodes the crop's pixels at full size and resizes them."""
    images = [encode(Image.fromarray(photo(600, 800, s)), "JPEG", quality=90) for s in range(4)]
    hs, ws = [600] * 4, [800] * 4
    for train in (True, False):
        got = decoder.decode_batch(images, hs, ws, size=48, train=train, seed=1).numpy()
        mean, _ = diff(got, cpu_decoder(images, hs, ws, 48, train=train, seed=1))
        assert mean < 2.0


def test_png_and_webp_variants(decoder):
    for kind, data in png_variants().items():
        if kind == "gray16":
            continue  # 16-bit: nvImageCodec's own scaling to 8 bits
        got = decoder.decode_batch([data], [90], [130], size=32, train=True, seed=0).numpy()
        want = cpu_decoder([data], [90], [130], 32, train=True, seed=0)
        assert diff(got, want)[1] <= 1, kind  # the same pixels, or the alpha's rounding


def test_into_a_given_out_and_empty_batches(decoder, batch):
    images, hs, ws = batch
    out = torch.zeros((7, 3, 64, 64), dtype=torch.uint8)
    assert decoder.decode_batch(images, hs, ws, size=64, train=False, out=out, layout="CHW") is out
    assert out.float().mean() > 10
    empty = decoder.decode_batch([], [], [], size=(32, 48), train=True, seed=0)
    assert tuple(empty.shape) == (0, 32, 48, 3)


def test_bad_images_are_named_by_index(decoder, batch):
    images, hs, ws = batch
    truncated = images[0][: len(images[0]) // 2]
    for bad in (truncated, b"\xff\xd8\xff" + b"x" * 100, b"", b"not an image at all"):
        with pytest.raises(DecodeError) as e:
            decoder.decode_batch(
                [images[1], bad, images[2]], [H] * 3, [W] * 3, size=32, train=True, seed=0
            )
        assert e.value.index == 1
    with pytest.raises(DecodeError, match="record says") as e:
        decoder.decode_batch(images[:2], [H, H + 1], [W, W], size=32, train=True, seed=0)
    assert e.value.index == 1


def test_bad_arguments(decoder, batch):
    images, hs, ws = batch
    with pytest.raises(ValueError, match="heights"):
        decoder.decode_batch(images, hs[:2], ws, size=32, train=True, seed=0)
    with pytest.raises(ValueError, match="layout"):
        decoder.decode_batch(images, hs, ws, size=32, train=True, seed=0, layout="NHWC")
    with pytest.raises(ValueError, match="square"):
        decoder.decode_batch(images, hs, ws, size=(32, 40), train=False)
    with pytest.raises(ValueError, match="positive"):
        decoder.decode_batch(images, hs, ws, size=0, train=False)
    with pytest.raises(ValueError, match="params"):
        params = draw_batch_params(
            hs[:2], ws[:2], (32, 32), train=True, rng=np.random.default_rng()
        )
        decoder.decode_batch(images, hs, ws, size=32, train=True, params=params)
    with pytest.raises(ValueError, match="ratio"):
        decoder.decode_batch(images, hs, ws, size=32, train=True, seed=0, ratio=(2, 1))
    with pytest.raises(ValueError, match="out must be"):
        decoder.decode_batch(images, hs, ws, size=32, train=True, seed=0, out=torch.empty(1))
    with pytest.raises(ValueError, match="stream"):
        decoder.decode_batch(images, hs, ws, size=32, train=True, seed=0, stream=object())
    with pytest.raises(ValueError, match="device"):
        NvImageCodecDecoder(device="meta")
    with pytest.raises(ValueError, match="num_threads"):
        NvImageCodecDecoder(num_threads=-1)


def test_a_missing_library_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # import now raises
    with pytest.raises(ImportError, match=r"pip install 'fastload\[nvimgcodec\]'"):
        import_nvimgcodec()
    with pytest.raises(ImportError, match="nvidia-nvimgcodec"):
        NvImageCodecDecoder()
