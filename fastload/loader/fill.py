"""Filling one batch slab from a fastload dataset: the work a loader worker does per batch."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..dataset import Dataset
from .layout import BatchLayout

__all__ = ["fill_batch", "BatchTimings"]


class BatchTimings(dict):
    """Seconds spent per stage for one batch (``read``, ``decode``) and bytes read."""


def fill_batch(dataset: Dataset, layout: BatchLayout, slab: np.ndarray, indices: np.ndarray,
               rng_seed: tuple[int, ...]) -> tuple[dict[str, Any], BatchTimings]:  # fmt: skip
    """Write records ``indices`` into ``slab`` (fixed-size fields gathered in C++, images
    decoded in place); return the fields that travel as lists, and the stage timings.

    ``rng_seed`` seeds the batch's augmentations, so they depend on which batch this is and
    never on which worker happens to fill it.
    """
    start = time.perf_counter()
    n = len(indices)
    views = layout.views(slab, n)
    listed = dataset.read_into(indices, out={name: views[name] for name in layout.gathered})
    read_done = time.perf_counter()
    if layout.decode:
        from ..decode import decode_batch_into  # only image pipelines pay for Pillow

        rng = np.random.default_rng(list(rng_seed))
        for name, spec in layout.decode.items():
            images = listed.pop(name)
            try:
                decode_batch_into([im.data for im in images], [im.height for im in images],
                                  [im.width for im in images], views[name], rng=rng,
                                  train=spec.train, layout=spec.layout)  # fmt: skip
            except Exception as e:
                index = getattr(e, "index", None)
                if index is not None and hasattr(e, "add_note"):
                    e.add_note(f"field {name!r} of dataset record {int(indices[index])}")
                raise
    done = time.perf_counter()
    nbytes = sum(v.nbytes for v in views.values())
    return listed, BatchTimings(read=read_done - start, decode=done - read_done, bytes=nbytes)
