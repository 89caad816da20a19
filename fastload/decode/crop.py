"""Decode one encoded image and write a resized crop of it into a caller's array."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np

from .decoders import Region, dct_scale, decode_any, decode_jpeg, is_jpeg
from .params import EVAL_CROP_RATIO, center_crop_params, eval_resize_size
from .resize import box_resize_into, resize_crop_into, resize_into, round_box

__all__ = ["decode_crop_into", "decode_center_crop_into", "check_out", "LAYOUTS"]

Buffer = Union[bytes, bytearray, memoryview]
LAYOUTS = ("HWC", "CHW")


def check_out(out: np.ndarray, layout: str, batched: bool) -> tuple:
    """Validate an output array; return its (height, width). Raises ValueError."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != np.uint8:
        raise ValueError(f"out must be uint8, got {out.dtype}")
    ndim = 4 if batched else 3
    shape = "(N, H, W, 3)" if layout == "HWC" else "(N, 3, H, W)"
    if not batched:
        shape = shape.replace("N, ", "")
    if out.ndim != ndim:
        raise ValueError(f"out must be {shape} for layout {layout}, got shape {out.shape}")
    img = out.shape[1:] if batched else out.shape
    channels, h, w = (img[2], img[0], img[1]) if layout == "HWC" else img
    if channels != 3:
        raise ValueError(f"out must be {shape} for layout {layout}, got shape {out.shape}")
    if h == 0 or w == 0:
        raise ValueError(f"out has a zero-size image dimension: shape {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    return h, w


def _check_crop(crop: Sequence[float], height: int, width: int) -> tuple:
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if len(crop) != 4:
        raise ValueError(f"crop must be (top, left, height, width), got {crop!r}")
    top, left, h, w = (float(v) for v in crop)
    eps = 1e-6 * max(height, width)
    if not (
        h > 0
        and w > 0
        and top >= -eps
        and left >= -eps
        and top + h <= height + eps
        and left + w <= width + eps
    ):
        raise ValueError(
            f"crop {tuple(crop)} is not a non-empty box inside the {width}x{height} image"
        )
    return top, left, h, w


def _region(top: float, left: float, h: float, w: float, scale: int, oh: int, ow: int) -> Region:
    """The decoded pixels a crop needs at 1/``scale``: its box, plus two on each side for
    rounding and for chroma upsampling at a region's edge, plus Pillow's filter reach where
    the box may fall between decoded pixels (``box_resize_into`` reads up to ~(decoded crop /
    out) pixels past it). A whole-pixel box at full scale is cut out before resizing: no
    reach (rows below the crop cost their Huffman decoding, ~0.5% of a training decode)."""
    between = scale > 1 or not all(float(v).is_integer() for v in (top, left, h, w))
    reach_rows = (int(math.ceil(h / scale / oh)) if between else 0) + 2
    reach_cols = (int(math.ceil(w / scale / ow)) if between else 0) + 2
    return Region(
        int(math.floor(top / scale)) - reach_rows,
        int(math.floor(left / scale)) - reach_cols,
        int(math.ceil((top + h) / scale)) + reach_rows,
        int(math.ceil((left + w) / scale)) + reach_cols,
    )


def decode_crop_into(
    data: Buffer,
    out: np.ndarray,
    crop: Sequence[float],
    flip: bool,
    *,
    width: int,
    height: int,
    layout: str = "HWC",
    jpeg_backend: str | None = None,
    resize_backend: str | None = None,
    entropy_index: Buffer | None = None,
) -> None:
    """Decode ``data`` (JPEG, PNG or WebP bytes), resize its ``crop`` to ``out``'s size with
    antialiased bilinear, mirror it left-right if ``flip``, and write it into ``out`` in place.

    ``crop`` is ``(top, left, height, width)`` in the original image's pixels. A box on
    whole decoded pixels is cropped then resized (torch's uint8 antialiased bilinear, as
    torchvision's v2 ``RandomResizedCrop``); a box between pixels (fractional values, or a
    DCT-scaled decode of a crop not on multiples of the scale) is resized with Pillow's
    ``resize(box=...)``, exact to the fraction. ``out`` is ``(H, W, 3)`` for
    ``layout="HWC"`` or ``(3, H, W)`` for ``"CHW"``, uint8, any strides (a view into a larger
    buffer is fine); nothing outside it is written. ``width``/``height`` are the image's size
    as recorded in the dataset; a different decoded size is a :class:`DecodeError`.

    JPEGs are decoded at a 1/2, 1/4 or 1/8 DCT scale when the crop is still at least
    ``out``'s size at that scale, and only the crop's rectangle (``libjpeg-region`` backend)
    or only down to its last row (``pillow``).
    Colour: grayscale, palette, CMYK and alpha images become RGB (alpha dropped). EXIF
    orientation is ignored. With the ``libjpeg-region`` and ``pillow`` backends, damage
    confined to rows below the crop goes unnoticed (they are not decoded). Raises
    DecodeError for bytes that do not decode, ValueError for a bad ``out`` or ``crop``.
    A box between pixels may come out one level apart from another backend's on some pixels
    (Pillow's ``resize(box=...)`` rounds by the size of the array it is given); the decoded
    pixels are the same.

    ``jpeg_backend``: ``"libjpeg-region"`` (if built), ``"simplejpeg"`` (if installed),
    ``"pillow"`` or ``"pillow-draft"``;
    ``resize_backend``: ``"torch"`` or ``"pil"``; default the fastest available (see
    ``available_jpeg_backends()``, ``available_resize_backends()``).
    ``entropy_index``: the JPEG's (``EncodedImage.entropy_index``), with which the
    ``libjpeg-region`` backend decodes only the MCUs around the crop: the same pixels, faster.
    """
    oh, ow = check_out(out, layout, batched=False)
    top, left, h, w = _check_crop(crop, height, width)
    if is_jpeg(data):
        scale = dct_scale(h, w, oh, ow)
        want = _region(top, left, h, w, scale, oh, ow)
        decoded = decode_jpeg(data, scale, want, height, width, jpeg_backend, entropy_index)
    else:
        decoded = decode_any(data, 1, height, width)
    rows, cols = decoded.pixels.shape[:2]
    k = decoded.scale
    fbox = (
        top * k - decoded.top,
        left * k - decoded.left,
        (top + h) * k - decoded.top,
        (left + w) * k - decoded.left,
    )
    if all(abs(v - round(v)) < 1e-6 for v in fbox):
        box = round_box(*fbox, rows, cols)
        resize_into(decoded.pixels, box, out, layout, bool(flip), resize_backend)
    else:
        box_resize_into(decoded.pixels, fbox, out, layout, bool(flip))


def decode_center_crop_into(
    data: Buffer,
    out: np.ndarray,
    *,
    width: int,
    height: int,
    crop_ratio: float = EVAL_CROP_RATIO,
    layout: str = "HWC",
    jpeg_backend: str | None = None,
    resize_backend: str | None = None,
) -> None:
    """The evaluation transform: torchvision's ``Resize(int(S / crop_ratio))`` (shorter side;
    the longer side ``int(256 * long / short)`` for S=224) then ``CenterCrop(S)``, S = ``out``'s
    (square) size, written into ``out`` (HWC or CHW) in place.

    With the ``torch`` resize backend this is the same computation as torchvision's v2
    transforms on a uint8 tensor (antialiased bilinear). JPEGs are decoded at a 1/2..1/8
    DCT scale when the resized image is at most that fraction of the original."""
    oh, ow = check_out(out, layout, batched=False)
    if oh != ow:
        raise ValueError(f"the eval center crop is square; out is {ow}x{oh}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    box = center_crop_params(height, width, oh, crop_ratio)
    new_h, new_w = eval_resize_size(height, width, oh, crop_ratio)
    if new_h < oh or new_w < ow:
        # Resized smaller than the crop (crop_ratio > 1): torchvision would pad with zeros;
        # this stretches the whole clamped box instead.
        decode_crop_into(
            data,
            out,
            box,
            False,
            width=width,
            height=height,
            layout=layout,
            jpeg_backend=jpeg_backend,
            resize_backend=resize_backend,
        )
        return
    # torchvision's CenterCrop offsets.
    at = (int(round((new_h - oh) / 2.0)), int(round((new_w - ow) / 2.0)))
    if is_jpeg(data):
        scale = dct_scale(height, width, new_h, new_w)
        whole = Region(0, 0, -(-height // scale), -(-width // scale))
        decoded = decode_jpeg(data, scale, whole, height, width, jpeg_backend)
    else:
        decoded = decode_any(data, 1, height, width)
    resize_crop_into(decoded.pixels, (new_h, new_w), at, out, layout, resize_backend)
