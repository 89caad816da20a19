"""Crop parameters for training and evaluation, drawn from a numpy ``Generator``.

A crop is a box ``(top, left, height, width)`` in the coordinates of the original (full-size)
image. Training crops are integers and follow torchvision's ``RandomResizedCrop.get_params``
step for step; evaluation crops may be fractional, so that one resize of that box gives the
same picture as torchvision's ``Resize(int(size / 0.875))`` followed by ``CenterCrop(size)``.

The algorithm is re-implemented here (torchvision does not import beside the CPU torch this
project uses); its random numbers come from a numpy ``Generator``, or an :class:`ImageRng`
(the loader's: one per image), rather than torch's global RNG, so the draws are
deterministic from a seed but not the same numbers torchvision would draw.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "Crop",
    "check_scale_ratio",
    "random_resized_crop_params",
    "center_crop_params",
    "eval_resize_size",
    "DEFAULT_SCALE",
    "DEFAULT_RATIO",
    "EVAL_CROP_RATIO",
]

DEFAULT_SCALE: tuple[float, float] = (0.08, 1.0)
DEFAULT_RATIO: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
EVAL_CROP_RATIO = 0.875  # the ImageNet convention: resize to 256, center crop 224
_ATTEMPTS = 10


class Crop(NamedTuple):
    """A box in the original image: rows ``top .. top+height``, columns ``left .. left+width``.

    Training crops are whole pixels; evaluation crops may be fractional.
    """

    top: float
    left: float
    height: float
    width: float


def check_scale_ratio(
    scale: Sequence[float], ratio: Sequence[float]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, ratio)`` as pairs of floats, or ValueError: RandomResizedCrop's ``scale`` is
    the range of the crop's area as a fraction of the image's, ``(min, max)`` with
    ``0 <= min <= max`` and ``max > 0`` (above 1 is allowed, as in torchvision: such areas
    never fit and are drawn again); ``ratio`` the range of its aspect ratio (width / height),
    ``0 < min <= max``. Ranges are not reordered (torchvision only warns about that)."""
    pairs = []
    for name, value in (("scale", scale), ("ratio", ratio)):
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from e
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"{name} must be a finite (min, max) range, got {value!r}")
        pairs.append((lo, hi))
    (s_lo, s_hi), (r_lo, _) = pairs
    if s_lo < 0 or s_hi <= 0:
        raise ValueError(
            f"scale is a fraction of the image's area: 0 <= min <= max, max > 0; got {scale!r}"
        )
    if r_lo <= 0:
        raise ValueError(f"ratio (width / height) must be positive, got {ratio!r}")
    return pairs[0], pairs[1]


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")


class ImageRng:
    """One image's augmentation draws, with the three methods of a numpy ``Generator`` that
    the crop and flip use, from Python's Mersenne Twister seeded by ``words`` (ints taken
    modulo 2**64; different lists, different streams). Cheap to make one per image, and no
    ``numpy.random`` import: that costs a fresh loader worker ~80 ms before its first batch."""

    __slots__ = ("_r",)

    def __init__(self, words: Sequence[int]) -> None:
        seed = len(words)
        for w in words:
            seed = (seed << 64) | (int(w) & 0xFFFFFFFFFFFFFFFF)
        self._r = random.Random(seed)

    def uniform(self, low: float, high: float) -> float:
        return self._r.uniform(low, high)

    def integers(self, low: int, high: int) -> int:
        """An int in ``[low, high)``."""
        return self._r.randrange(low, high)

    def random(self) -> float:
        return self._r.random()


def random_resized_crop_params(
    rng: np.random.Generator | ImageRng,
    height: int,
    width: int,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> Crop:
    """torchvision's ``RandomResizedCrop.get_params`` for an image of ``height`` x ``width``.

    Up to 10 attempts draw an area fraction uniformly in ``scale`` and an aspect ratio
    (width/height) log-uniformly in ``ratio``; the first box that fits is placed uniformly at
    random. If none fits, the fallback is a center crop of the whole image clamped to the
    ratio range. Returns integer ``Crop(top, left, height, width)`` with ``height, width >= 1``.
    Raises ValueError for a bad size, ``scale`` or ``ratio`` (see :func:`check_scale_ratio`).
    """
    _check_size(height, width)
    scale, ratio = check_scale_ratio(scale, ratio)
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return Crop(top, left, h, w)
    # Fallback: central crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    # Rounding can never exceed the image, but a tiny image can round to 0.
    h = min(max(h, 1), height)
    w = min(max(w, 1), width)
    return Crop((height - h) // 2, (width - w) // 2, h, w)


def eval_resize_size(
    height: int, width: int, size: int, crop_ratio: float = EVAL_CROP_RATIO
) -> tuple[int, int]:
    """``(new_h, new_w)`` of torchvision's ``Resize(int(size / crop_ratio))``: the shorter
    side to ``int(size / crop_ratio)``, the longer ``int(that * long / short)``."""
    _check_size(height, width)
    if size <= 0 or crop_ratio <= 0:
        raise ValueError(f"size and crop_ratio must be positive, got {size}, {crop_ratio}")
    short_target = int(size / crop_ratio)
    if height <= width:
        new_h, new_w = short_target, int(short_target * width / height)
    else:
        new_w, new_h = short_target, int(short_target * height / width)
    return max(new_h, 1), max(new_w, 1)


def center_crop_params(
    height: int, width: int, size: int, crop_ratio: float = EVAL_CROP_RATIO
) -> Crop:
    """The box of the original image that torchvision's eval transform keeps.

    That transform is ``Resize(int(size / crop_ratio))`` (shorter side to 256 for size 224,
    the longer side ``int(256 * long / short)``) then ``CenterCrop(size)``. The returned box,
    resized to ``size x size``, gives that picture in one resize; it is fractional in general.
    If the resized image is smaller than ``size`` along a side (only with ``crop_ratio > 1``),
    the box is clamped to the image instead of padded.
    """
    new_h, new_w = eval_resize_size(height, width, size, crop_ratio)
    crop_h, crop_w = min(size, new_h), min(size, new_w)
    # torchvision's CenterCrop: offsets int(round((new - crop) / 2)).
    top_r = int(round((new_h - crop_h) / 2.0))
    left_r = int(round((new_w - crop_w) / 2.0))
    sy, sx = height / new_h, width / new_w
    return Crop(top_r * sy, left_r * sx, crop_h * sy, crop_w * sx)
