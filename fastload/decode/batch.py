"""Decode a batch of encoded images into one preallocated uint8 array."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .crop import check_out, decode_center_crop_into, decode_crop_into
from .errors import DecodeError
from .params import EVAL_CROP_RATIO, Crop, center_crop_params, random_resized_crop_params

__all__ = ["decode_batch_into", "draw_batch_params", "warm_up"]

Buffer = Union[bytes, bytearray, memoryview]


def draw_batch_params(
    heights: Sequence[int],
    widths: Sequence[int],
    size: Tuple[int, int],
    *,
    train: bool,
    rng: Optional[np.random.Generator] = None,
) -> List[Tuple[Crop, bool]]:
    """Crop and flip for each image, drawn in image order.

    ``train``: per image, torchvision's RandomResizedCrop parameters (scale (0.08, 1), ratio
    (3/4, 4/3)) then a flip with probability 0.5. Eval: the ``Resize(size / 0.875)`` +
    ``CenterCrop(size)`` box and no flip (``rng`` unused). ``size`` is ``(H, W)``; the eval
    crop is square in the resized image, so eval uses ``H`` (and needs ``H == W``).
    """
    if len(heights) != len(widths):
        raise ValueError(f"{len(heights)} heights but {len(widths)} widths")
    params: List[Tuple[Crop, bool]] = []
    if train:
        if rng is None:
            raise ValueError("training crops need an rng")
        for h, w in zip(heights, widths):
            crop = random_resized_crop_params(rng, int(h), int(w))
            params.append((crop, bool(rng.random() < 0.5)))
    else:
        if size[0] != size[1]:
            raise ValueError(f"the eval center crop is square; out is {size[1]}x{size[0]}")
        for h, w in zip(heights, widths):
            params.append((center_crop_params(int(h), int(w), size[0], EVAL_CROP_RATIO), False))
    return params


def _run(images, heights, widths, out, params, layout, lo, hi, jpeg_backend, resize_backend):
    for i in range(lo, hi):
        try:
            if params is None:
                decode_center_crop_into(images[i], out[i], width=int(widths[i]),
                                        height=int(heights[i]), layout=layout,
                                        jpeg_backend=jpeg_backend, resize_backend=resize_backend)
            else:
                crop, flip = params[i]
                decode_crop_into(images[i], out[i], crop, flip, width=int(widths[i]),
                                 height=int(heights[i]), layout=layout,
                                 jpeg_backend=jpeg_backend, resize_backend=resize_backend)
        except DecodeError as e:
            raise e.with_index(i) from e.__cause__


def decode_batch_into(
    images: Sequence[Buffer],
    heights: Sequence[int],
    widths: Sequence[int],
    out: np.ndarray,
    *,
    train: bool,
    seed: Optional[int] = None,
    rng: Optional[np.random.Generator] = None,
    layout: str = "HWC",
    num_threads: int = 1,
    jpeg_backend: Optional[str] = None,
    resize_backend: Optional[str] = None,
    rows: Optional[Tuple[int, int]] = None,
) -> None:
    """Decode ``images`` (JPEG/PNG/WebP bytes) into ``out`` (N, H, W, 3) for ``layout="HWC"``
    or (N, 3, H, W) for ``"CHW"``, uint8, in place.

    ``train=True``: RandomResizedCrop + horizontal flip (p=0.5) drawn from ``rng`` (or a new
    ``np.random.default_rng(seed)``), in image order before any decoding, so results do not
    depend on ``num_threads``. ``train=False``: :func:`decode_center_crop_into` (torchvision's
    ``Resize(int(S / 0.875))`` + ``CenterCrop(S)``; ``out`` square). ``heights``/``widths``
    are the images' recorded sizes.

    ``rows=(lo, hi)``: decode only images ``lo..hi-1`` into ``out[lo:hi]`` (the rest of
    ``out`` is left alone). Crops and flips are still drawn for the whole batch, so each part
    gets exactly what a call for the whole batch writes there: several processes can share
    one batch, each decoding its part.

    ``num_threads > 1`` splits the batch into that many contiguous parts decoded on threads
    (decode and resize release the GIL); the first failing image in batch order is raised.
    Raises :class:`DecodeError` (with ``.index``, the image's position in ``images``) for an
    image that does not decode; ValueError for a bad ``out``, sizes or parameters.
    """
    n = len(images)
    if len(heights) != n or len(widths) != n:
        raise ValueError(f"{n} images but {len(heights)} heights and {len(widths)} widths")
    oh, ow = check_out(out, layout, batched=True)
    if out.shape[0] != n:
        raise ValueError(f"out holds {out.shape[0]} images but {n} were given")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    if rng is None and train:
        rng = np.random.default_rng(seed)
    if train:
        params: Optional[list] = draw_batch_params(heights, widths, (oh, ow), train=True, rng=rng)
    else:
        if oh != ow:
            raise ValueError(f"the eval center crop is square; out is {ow}x{oh}")
        params = None  # each image: decode_center_crop_into (resize, then center crop)
    lo, hi = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= lo <= hi <= n:
        raise ValueError(f"rows {rows} are not a range of the {n} images")
    args = (images, heights, widths, out, params, layout)
    threads = min(num_threads, hi - lo)
    if threads <= 1:
        _run(*args, lo, hi, jpeg_backend, resize_backend)
        return
    bounds = [lo + (hi - lo) * k // threads for k in range(threads + 1)]
    # A pool per call: a batch takes far longer than starting two threads, and a cached pool
    # would not survive the fork of a DataLoader worker.
    with ThreadPoolExecutor(threads, thread_name_prefix="fastload-decode") as pool:
        futures = [pool.submit(_run, *args, bounds[k], bounds[k + 1], jpeg_backend,
                               resize_backend) for k in range(threads)]
        errors = [f.exception() for f in futures]
    for err in errors:  # parts are in batch order: the first error is the lowest index
        if err is not None:
            raise err


_warm = False


def warm_up() -> None:
    """Do once, in this process, what the first image decode would otherwise pay for: the
    decoders' self-check and the first call of the resize kernels (about 0.3 s here). The
    loader calls it before starting its workers, so forked workers begin warm and the first
    batch comes that much sooner. Never raises."""
    global _warm
    if _warm:
        return
    _warm = True
    try:
        import io

        from PIL import Image

        from .decoders import _pillow_rows_works

        _pillow_rows_works()
        f = io.BytesIO()
        Image.new("RGB", (64, 48), (90, 120, 150)).save(f, "JPEG")
        out = np.empty((1, 16, 16, 3), np.uint8)
        decode_batch_into([f.getvalue()], [48], [64], out, train=True,
                          rng=np.random.default_rng(0))  # fmt: skip
    except Exception:  # a real problem shows on the first real image, with its index
        pass
