"""Decode a batch of encoded images into one preallocated uint8 array."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Union

import numpy as np

from .crop import check_out, decode_center_crop_into, decode_crop_into
from .errors import DecodeError
from .params import (
    DEFAULT_RATIO,
    DEFAULT_SCALE,
    EVAL_CROP_RATIO,
    Crop,
    ImageRng,
    center_crop_params,
    check_scale_ratio,
    random_resized_crop_params,
)

__all__ = ["decode_batch_into", "draw_batch_params", "image_rngs", "warm_up"]

Buffer = Union[bytes, bytearray, memoryview]


def draw_batch_params(
    heights: Sequence[int],
    widths: Sequence[int],
    size: tuple[int, int],
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    rngs: Sequence[ImageRng] | None = None,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> list[tuple[Crop, bool]]:
    """Crop and flip for each image, drawn in image order from ``rng``, or each image's from
    its own generator in ``rngs`` (see :func:`image_rngs`).

    ``train``: per image, torchvision's RandomResizedCrop parameters (``scale``, default
    (0.08, 1): the crop's area as a fraction of the image's; ``ratio``, default (3/4, 4/3):
    its width / height; 10 attempts, then the center-crop fallback) then a flip with
    probability 0.5. Eval: the ``Resize(size / 0.875)`` + ``CenterCrop(size)`` box and no flip
    (no generator used; ``scale`` and ``ratio`` are only validated). ``size`` is ``(H, W)``;
    the eval crop is square in the resized image, so eval uses ``H`` (and needs ``H == W``).
    """
    scale, ratio = check_scale_ratio(scale, ratio)
    if len(heights) != len(widths):
        raise ValueError(f"{len(heights)} heights but {len(widths)} widths")
    params: list[tuple[Crop, bool]] = []
    if train:
        if rngs is not None:
            if len(rngs) != len(heights):
                raise ValueError(f"{len(heights)} images but {len(rngs)} generators")
            per_image = list(rngs)
        elif rng is not None:
            per_image = [rng] * len(heights)
        else:
            raise ValueError("training crops need an rng")
        for h, w, g in zip(heights, widths, per_image):
            crop = random_resized_crop_params(g, int(h), int(w), scale, ratio)
            params.append((crop, bool(g.random() < 0.5)))
    else:
        if size[0] != size[1]:
            raise ValueError(f"the eval center crop is square; out is {size[1]}x{size[0]}")
        for h, w in zip(heights, widths):
            params.append((center_crop_params(int(h), int(w), size[0], EVAL_CROP_RATIO), False))
    return params


def image_rngs(seed: Sequence[int], positions: Iterable[int]) -> list[ImageRng]:
    """A generator per image, keyed by ``seed`` (a batch's seed words) and the image's
    position in its batch: an image's augmentation then does not depend on which other images
    are drawn with it, or where, so any part of a batch can be decoded on its own (the loader
    shares a batch of images among its workers) with the same result."""
    base = [int(x) for x in seed]
    return [ImageRng(base + [int(p)]) for p in positions]


def _run(
    images, indexes, heights, widths, out, params, layout, lo, hi, jpeg_backend, resize_backend
):
    for i in range(lo, hi):
        try:
            if params is None:
                decode_center_crop_into(
                    images[i],
                    out[i],
                    width=int(widths[i]),
                    height=int(heights[i]),
                    layout=layout,
                    jpeg_backend=jpeg_backend,
                    resize_backend=resize_backend,
                )
            else:
                crop, flip = params[i]
                decode_crop_into(
                    images[i],
                    out[i],
                    crop,
                    flip,
                    width=int(widths[i]),
                    height=int(heights[i]),
                    layout=layout,
                    jpeg_backend=jpeg_backend,
                    resize_backend=resize_backend,
                    entropy_index=indexes[i] if indexes is not None else None,
                )
        except DecodeError as e:
            raise e.with_index(i) from e.__cause__


def decode_batch_into(
    images: Sequence[Buffer],
    heights: Sequence[int],
    widths: Sequence[int],
    out: np.ndarray,
    *,
    train: bool,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    layout: str = "HWC",
    num_threads: int = 1,
    jpeg_backend: str | None = None,
    resize_backend: str | None = None,
    params: Sequence[tuple[Crop, bool]] | None = None,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    indexes: Sequence[Buffer | None] | None = None,
) -> None:
    """Decode ``images`` (JPEG/PNG/WebP bytes) into ``out`` (N, H, W, 3) for ``layout="HWC"``
    or (N, 3, H, W) for ``"CHW"``, uint8, in place.

    ``train=True``: RandomResizedCrop (``scale``, ``ratio``: see :func:`draw_batch_params`) +
    horizontal flip (p=0.5) drawn from ``rng`` (or a new ``np.random.default_rng(seed)``), in
    image order before any decoding, so results do not depend on ``num_threads``.
    ``train=False``: :func:`decode_center_crop_into` (torchvision's ``Resize(int(S / 0.875))``
    + ``CenterCrop(S)``; ``out`` square). ``heights``/``widths`` are the images' recorded
    sizes.

    ``params``: training crops and flips already drawn, one ``(Crop, flip)`` per image (from
    :func:`draw_batch_params`, say with a generator per image), instead of drawing them here.
    ``indexes``: each image's entropy index or None (``EncodedImage.entropy_index``): a
    training crop of an indexed JPEG decodes only the MCUs around it (the same pixels).

    ``num_threads > 1`` splits the batch into that many contiguous parts decoded on threads
    (decode and resize release the GIL); the first failing image in batch order is raised.
    Raises :class:`DecodeError` (with ``.index``, the image's position in ``images``) for an
    image that does not decode; ValueError for a bad ``out``, sizes or parameters.
    """
    n = len(images)
    if len(heights) != n or len(widths) != n:
        raise ValueError(f"{n} images but {len(heights)} heights and {len(widths)} widths")
    if indexes is not None and len(indexes) != n:
        raise ValueError(f"{n} images but {len(indexes)} entropy indexes")
    oh, ow = check_out(out, layout, batched=True)
    if out.shape[0] != n:
        raise ValueError(f"out holds {out.shape[0]} images but {n} were given")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if train and params is not None:
        if len(params) != n:
            raise ValueError(f"{n} images but {len(params)} (crop, flip) params")
        params = list(params)
    elif train:
        if rng is None:
            rng = np.random.default_rng(seed)
        params = draw_batch_params(
            heights, widths, (oh, ow), train=True, rng=rng, scale=scale, ratio=ratio
        )
    else:
        if oh != ow:
            raise ValueError(f"the eval center crop is square; out is {ow}x{oh}")
        params = None  # each image: decode_center_crop_into (resize, then center crop)
    args = (images, indexes, heights, widths, out, params, layout)
    threads = min(num_threads, n)
    if threads <= 1:
        _run(*args, 0, n, jpeg_backend, resize_backend)
        return
    bounds = [n * k // threads for k in range(threads + 1)]
    # A pool per call: a batch takes far longer than starting two threads, and a cached pool
    # would not survive the fork of a DataLoader worker.
    with ThreadPoolExecutor(threads, thread_name_prefix="fastload-decode") as pool:
        futures = [
            pool.submit(_run, *args, bounds[k], bounds[k + 1], jpeg_backend, resize_backend)
            for k in range(threads)
        ]
        errors = [f.exception() for f in futures]
    for err in errors:  # parts are in batch order: the first error is the lowest index
        if err is not None:
            raise err


_warm = False
# A 64x48 JPEG (Pillow, quality 50): made by Pillow at run time, it cost ~7 ms of Pillow's
# plugin imports that the region decoder never needs.
_WARM_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERX"
    "RTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAwAEADASIAAhEBAxEB/8QAFQABAQAAAAAAAAAAAAAAAAAA"
    "AAP/xAAUEAEAAAAAAAAAAAAAAAAAAAAA/8QAFQEBAQAAAAAAAAAAAAAAAAAAAAT/xAAUEQEAAAAAAAAAAAAAAAAA"
    "AAAA/9oADAMBAAIRAxEAPwCAClOAAAAAAAAAAAAAAAAAAAAAA//Z"
)


def warm_up() -> None:
    """Do once, in this process, what the first image decode would otherwise pay for: the
    Pillow row decoder's self-check where it is the default JPEG path (7 ms, for nothing
    where the region decoder is) and the first call of the resize kernels (about 0.05 s
    here). The loader calls it before starting its workers, so forked workers begin warm and
    the first batch comes that much sooner. Never raises."""
    global _warm
    if _warm:
        return
    _warm = True
    try:
        from .decoders import default_jpeg_backend, pillow_rows_works

        if default_jpeg_backend() == "pillow":
            pillow_rows_works()
        out = np.empty((1, 16, 16, 3), np.uint8)
        params = draw_batch_params([48], [64], (16, 16), train=True, rngs=image_rngs([0], [0]))
        decode_batch_into([_WARM_JPEG], [48], [64], out, train=True, params=params)
    except Exception:  # a real problem shows on the first real image, with its index
        pass
