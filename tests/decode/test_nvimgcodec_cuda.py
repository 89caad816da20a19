"""The nvImageCodec backend on the GPU (nvJPEG) against its CPU path: the same crops, pixels
within a decoder's and a resampler's rounding, on a side stream (``pytest -m cuda``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastload.decode import DecodeError, draw_batch_params
from fastload.decode.nvimgcodec import NvImageCodecDecoder

from .test_decode import encode, photo

pytestmark = pytest.mark.cuda

pytest.importorskip("nvidia.nvimgcodec", reason="the nvidia-nvimgcodec wheel is not installed")


@pytest.fixture(scope="module")
def decoders():
    return NvImageCodecDecoder(device="cuda"), NvImageCodecDecoder()


def jpegs(n: int, h: int = 375, w: int = 500) -> list:
    return [encode(Image.fromarray(photo(h, w, s)), "JPEG", quality=90) for s in range(n)]


def abs_diff(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return np.abs(a.cpu().numpy().astype(np.int16) - b.numpy().astype(np.int16))


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("train", [True, False])
def test_gpu_decode_matches_the_cpu_path(decoders, layout, train):
    gpu, cpu = decoders
    images = jpegs(16)
    hs, ws = [375] * 16, [500] * 16
    params = (
        draw_batch_params(hs, ws, (224, 224), train=True, rng=np.random.default_rng(2))
        if train
        else None
    )
    stream = torch.cuda.Stream()
    got = gpu.decode_batch(
        images, hs, ws, size=224, train=train, params=params, layout=layout, stream=stream
    )
    stream.synchronize()
    want = cpu.decode_batch(images, hs, ws, size=224, train=train, params=params, layout=layout)
    assert got.is_cuda and got.shape == want.shape and got.dtype == torch.uint8
    d = abs_diff(got, want)
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a level or two, and
    # the float resize rounds where torch's uint8 resize uses fixed point.
    assert d.mean() < 1.5 and np.percentile(d, 99.9) <= 12
    # The same crop and flip: the mirror image would differ far more.
    flipped = want.flip(-2 if layout == "HWC" else -1)
    assert abs_diff(got, flipped).mean() > 3 * d.mean()


def test_png_pixels_are_lossless_on_both(decoders):
    gpu, cpu = decoders
    data = [encode(Image.fromarray(photo(120, 160, 7)), "PNG")] * 3
    got = gpu.decode_batch(data, [120] * 3, [160] * 3, size=64, train=True, seed=0)
    want = cpu.decode_batch(data, [120] * 3, [160] * 3, size=64, train=True, seed=0)
    assert abs_diff(got, want).max() <= 1  # only the resizes' rounding


def test_a_bad_image_is_named_on_the_gpu(decoders):
    gpu, _ = decoders
    images = jpegs(3)
    images[2] = b"\xff\xd8\xff" + b"x" * 100  # a JPEG's first marker, then nothing valid
    with pytest.raises(DecodeError) as e:
        gpu.decode_batch(images, [375] * 3, [500] * 3, size=64, train=True, seed=0)
        torch.cuda.synchronize()
    assert e.value.index == 2
