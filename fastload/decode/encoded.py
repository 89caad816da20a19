"""A batch of encoded images with the crops and flips to take of them, for a decoder in the
training process (DALI, nvImageCodec): the loader's workers read the images and draw the
crops exactly as for the CPU decoder (the same seed gives the same boxes), and send them as
an :class:`EncodedBatch`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .batch import draw_batch_params, image_rngs
from .params import DEFAULT_RATIO, DEFAULT_SCALE, Crop

__all__ = ["EncodedBatch", "encoded_batch", "BadImagesError"]


@dataclass
class EncodedBatch:
    """A batch's encoded images: their bytes end to end (``data``, image ``i`` at
    ``offsets[i]:offsets[i + 1]``; an empty one for a record that was skipped; None while
    they are in the batch's slab, until the consumer points ``data`` there), each image's
    crop box in pixels (``anchors`` x, y and ``shapes`` width, height; fractional for the
    eval crop), its flip, its recorded size (``heights``, ``widths``) and its dataset record
    (for errors)."""

    data: bytes | np.ndarray | None
    offsets: np.ndarray
    anchors: np.ndarray
    shapes: np.ndarray
    flips: np.ndarray
    records: np.ndarray
    heights: np.ndarray
    widths: np.ndarray

    def __len__(self) -> int:
        return len(self.records)

    def images(self) -> list[np.ndarray]:
        """Each image's bytes as a uint8 array (views of ``data``)."""
        if self.data is None:
            raise RuntimeError("the batch's images are still in its slab")
        whole = np.frombuffer(self.data, np.uint8) if isinstance(self.data, bytes) else self.data
        return [whole[a:b] for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())]

    def params(self) -> list[tuple[Crop, bool]]:
        """Each image's training ``(Crop, flip)``, as :func:`draw_batch_params` drew them."""
        return [
            (Crop(int(y), int(x), int(h), int(w)), bool(f))
            for (x, y), (w, h), f in zip(
                self.anchors.tolist(), self.shapes.tolist(), self.flips.tolist()
            )
        ]

    def __getitem__(self, rows: np.ndarray) -> EncodedBatch:
        """The rows ``rows`` (an index array), in that order."""
        rows = np.asarray(rows, np.int64)
        parts = self.images()
        kept = [parts[i] for i in rows.tolist()]
        offsets = np.zeros(len(kept) + 1, np.int64)
        np.cumsum([len(p) for p in kept], out=offsets[1:])
        data = b"".join(kept)  # (arrays are buffers: one copy, not two)
        return EncodedBatch(
            data,
            offsets,
            self.anchors[rows],
            self.shapes[rows],
            self.flips[rows],
            self.records[rows],
            self.heights[rows],
            self.widths[rows],
        )


def encoded_batch(
    images: Sequence,
    spec,
    rng_seed: tuple,
    positions: range,
    records: np.ndarray,
    into: np.ndarray | None = None,
    *,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
) -> EncodedBatch:
    """The :class:`EncodedBatch` of ``images`` (EncodedImage values, None for a skipped
    record) at ``positions`` in their batch: crops and flips drawn as the CPU decoder draws
    them from ``rng_seed`` (the batch's seed words and the field's number) for ``spec``
    (``hw``, ``train``), with RandomResizedCrop's ``scale`` and ``ratio``. The bytes are
    written end to end into ``into`` (uint8, the slab's area for them) when they fit, else
    joined."""
    n = len(images)
    anchors = np.zeros((n, 2), np.float32)
    shapes = np.ones((n, 2), np.float32)
    flips = np.zeros(n, np.int32)
    heights = np.array([im.height if im is not None else 1 for im in images], np.int64)
    widths = np.array([im.width if im is not None else 1 for im in images], np.int64)
    rngs = image_rngs(rng_seed, positions) if spec.train else None
    params = draw_batch_params(
        heights.tolist(),
        widths.tolist(),
        spec.hw,
        train=spec.train,
        rngs=rngs,
        scale=scale,
        ratio=ratio,
    )
    for i, (crop, flip) in enumerate(params):
        anchors[i] = crop.left, crop.top
        shapes[i] = crop.width, crop.height
        flips[i] = flip
    parts = [memoryview(im.data) if im is not None else memoryview(b"") for im in images]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([p.nbytes for p in parts], out=offsets[1:])
    if into is not None and offsets[-1] <= len(into):
        for part, a, b in zip(parts, offsets[:-1].tolist(), offsets[1:].tolist()):
            into[a:b] = np.frombuffer(part, np.uint8)
        data = None
    else:
        data = b"".join(parts)  # one copy
    return EncodedBatch(
        data,
        offsets,
        anchors,
        shapes,
        flips,
        np.asarray(records, np.int64),
        heights,
        widths,
    )


class BadImagesError(Exception):
    """Raised by a decoder's ``collect()`` (DALI's, nvImageCodec's): the batch's images that
    do not decode, as ``(row, DecodeError)`` in row order."""

    def __init__(self, bad: list) -> None:
        self.bad = bad
        super().__init__(f"{len(bad)} image(s) of the batch do not decode")
