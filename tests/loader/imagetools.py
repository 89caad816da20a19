"""Helpers of the tests of staged decoders (DALI, nvImageCodec): smooth pictures whose blue
channel is their record's, a dataset of them (one of them cut short, if asked), and checks of
decoded and finished batches."""

from __future__ import annotations

import io

import numpy as np
import torch

import fastload
from fastload.decode import IMAGENET_MEAN, IMAGENET_STD

N = 70
BATCH = 16
SIZE = 32
BAD = 37


def jpeg(i: int) -> bytes:
    """A smooth picture (resampling differs little between decoders) whose left and right
    differ (a flip shows), its blue channel the record's own: (37 * i) % 256."""
    from PIL import Image

    h, w = 60 + 7 * (i % 5), 80 + 11 * (i % 4)
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 // w, y * 255 // h, np.full((h, w), blue(i))], -1)
    f = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(f, "JPEG", quality=95)
    return f.getvalue()


def blue(i: int) -> int:
    return (37 * i) % 256


def write(path, bad: int | None = None, compression: str = "zstd"):
    with fastload.Writer(
        path, {"image": "image", "label": "int64", "name": "str"}, compression=compression
    ) as w:
        for i in range(N):
            data = jpeg(i)
            w.write({"image": data[:300] if i == bad else data, "label": i, "name": f"n{i}"})
    return path


def check_rows(batches: list[dict], layout: str = "HWC") -> list[int]:
    """Each row's pixels are its label's picture (blue channel) and its name its label's."""
    labels = []
    for b in batches:
        image = b["image"].float()
        blues = image[..., 2] if layout == "HWC" else image[:, 2]
        for row, label in enumerate(b["label"].tolist()):
            assert abs(blues[row].mean().item() - blue(label)) < 3, (row, label)
            assert b["name"][row] == f"n{label}"
            labels.append(label)
    return labels


def assert_normalized(got: torch.Tensor, pixels: torch.Tensor, layout: str) -> None:
    """``got`` is uint8 ``pixels`` (in ``layout``) normalized with ImageNet's mean and std:
    float32 within 1e-5 of the exact value, half types within one unit in the last place."""
    x = pixels.numpy() if layout == "HWC" else pixels.permute(0, 2, 3, 1).numpy()
    exact = (x / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    if layout == "CHW":
        exact = exact.transpose(0, 3, 1, 2)
    err = np.abs(got.double().numpy() - exact)
    if got.dtype == torch.float32:
        assert err.max() <= 1e-5
        return
    bits = 7 if got.dtype == torch.bfloat16 else 10
    assert (err <= np.exp2(np.floor(np.log2(np.maximum(np.abs(exact), 2.0**-14))) - bits)).all()
