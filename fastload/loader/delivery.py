"""A filled slab handed to the user as a batch: tensors over the slab (no copy) plus the listed
fields, bad samples dropped under a skip budget, variable-length fields made into tensors,
images and tokens finished (finishing.py: on the GPU after the copy, else on the CPU), and
the batch moved to the loader's device. See slabs.py for the slab's lifetime."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..format.schema import Schema
from .badsamples import BadSampleBudget
from .device import CopiesInFlight, to_device
from .finishing import Finishing
from .layout import BatchLayout
from .messages import BatchResult
from .slabs import SlabPool
from .stats import LoaderStats
from .variable import VariableSpec, collate_variable

__all__ = ["Delivery"]


class Delivery:
    """Hands out the batches of one slab pool. ``collated``: the variable-length fields the
    consumer makes into tensors (variable.py); ``copies``: batches being copied to the GPU
    (kept by the loader across new buffers); ``finishing``: what the consumer finishes
    (finishing.py); ``handed``: the iteration's number of the batch handed out last."""

    def __init__(
        self,
        layout: BatchLayout,
        slabs: SlabPool,
        stats: LoaderStats,
        *,
        budget: BadSampleBudget | None,
        schema: Schema,
        collated: Mapping[str, VariableSpec],
        device: torch.device | None,
        copies: CopiesInFlight | None,
        finishing: Finishing | None = None,
    ) -> None:
        self.layout, self.slabs, self.stats = layout, slabs, stats
        self.budget, self.schema, self.collated = budget, schema, collated
        self.device, self.copies = device, copies
        self.finishing = finishing if finishing else None
        self.handed = 0

    def deliver(self, result: BatchResult) -> Any:
        """The batch of a filled slab, as tensors over the slab (no copy) plus listed
        fields. With staged image fields (DALI, nvImageCodec): an :class:`Unpacked` batch for
        the decode stage instead (finished by :meth:`finish` once decoded)."""
        start = time.perf_counter()
        layout = self.layout
        lease = self.slabs.lease(result.slab)
        self.handed = result.batch
        read, bad = result.samples, result.bad or []
        listed = result.listed or {}
        for name, area in layout.encoded.items():  # a staged field's images in the slab
            images = listed[name]
            if images.data is None:
                images.data = layout.views(lease, read)[area].reshape(-1)
        kept = None
        if self.budget is not None:
            kept = self._skip_bad(result, lease, count=not layout.staged)
        views = layout.views(lease, result.samples)
        listed = result.listed or {}  # (skipping bad rows replaced it)
        batch: dict[str, Any] = {}
        for name in layout.names:
            if name in views:
                batch[name] = layout.tensor(name, views[name])
            elif name not in layout.targets:  # (those, finishing adds)
                batch[name] = listed[name]
        del views, lease  # the batch's tensors now own the slab
        self.stats.stage_seconds["collate"] += time.perf_counter() - start
        timings = result.timings or {}
        self.stats.add_batch(result.samples, timings.get("bytes", 0), timings)
        if layout.staged:
            from .decodestage import Unpacked

            rows = kept if kept is not None else np.arange(read)
            return Unpacked(batch, result.batch, read, list(bad), rows)
        return self.finish(batch)

    def finish(self, batch: dict) -> dict:
        """A batch's variable-length fields made into tensors, its images and tokens
        finished, and the batch moved to the loader's device (finishing after the copy, on
        the copy stream, for a CUDA device; before it, on the CPU, otherwise)."""
        if self.collated:
            start = time.perf_counter()
            batch = collate_variable(batch, self.collated, self.schema)
            self.stats.stage_seconds["collate"] += time.perf_counter() - start
        gpu = self.device is not None and self.device.type == "cuda"
        if self.finishing is not None and not gpu:
            start = time.perf_counter()
            batch = self.finishing.on_cpu(batch)
            self.stats.stage_seconds["decode"] += time.perf_counter() - start
        if self.device is not None:
            start = time.perf_counter()
            batch = to_device(batch, self.device, self.copies, self.finishing if gpu else None)
            self.stats.stage_seconds["transfer"] += time.perf_counter() - start
        return batch

    def _skip_bad(self, result: BatchResult, slab: np.ndarray, count: bool = True) -> np.ndarray:
        """Drop ``result``'s skipped rows: the rows after them move up in the slab, listed
        fields lose them, and (``count``) the budget counts them (raising once it is spent).
        Returns the rows kept."""
        n = result.samples
        if count and self.budget is not None:
            self.budget.add(n, result.bad or ())  # (on an error the lease frees the slab)
        if not result.bad:
            return np.arange(n)
        dropped = {row for row, _ in result.bad}
        keep = np.array([i for i in range(n) if i not in dropped], np.int64)
        areas = set(self.layout.encoded.values())  # not rows: their EncodedBatch takes its own
        for name, v in self.layout.views(slab, n).items():
            if name not in areas:
                v[: len(keep)] = v[keep]
        result.listed = {
            name: ([values[i] for i in keep] if isinstance(values, list) else values[keep])
            for name, values in (result.listed or {}).items()
        }
        result.samples = len(keep)
        self.stats.skipped += len(dropped)
        return keep
