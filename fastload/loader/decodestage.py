"""The consumer's decode stage: image fields of ``ImageDecode(backend="dali")`` and
``ImageDecode(backend="nvimgcodec")`` arrive from the workers as
:class:`~fastload.decode.encoded.EncodedBatch` (encoded bytes and crops) and leave as uint8
pixel tensors, decoded one batch ahead of the batch handed out (the next batch decodes in
DALI's or nvImageCodec's threads, or on the GPU, while the training step runs). Finishing
them (``dtype=``, ``normalize=``) is delivery's, as for pixels from the workers.

Bad images: under ``bad_samples="raise"`` the first one raises :class:`DecodeError` naming
its field and dataset record. Under a skip budget they are dropped from their batch (every
field), counted with the records the workers skipped, and the rest of the batch decoded
again without them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..decode.encoded import BadImagesError
from .badsamples import BadSampleBudget
from .messages import Failed
from .slabs import SlabPool
from .stats import LoaderStats

__all__ = ["Unpacked", "DecodeStage"]


@dataclass
class Unpacked:
    """A batch as the consumer unpacked it, before DALI: its tensors and lists, its number
    in the iteration, its size as read, the rows the workers skipped (``(row, why)``, rows
    of the batch as read) and the rows left (``kept``)."""

    batch: dict
    number: int
    samples: int
    bad: list
    kept: np.ndarray


class DecodeStage:
    """The decoders (DALI's, nvImageCodec's) of a loader's staged image fields (kept across
    epochs)."""

    def __init__(
        self,
        specs: dict,
        batch_size: int,
        device: torch.device | None,
        budget: BadSampleBudget | None,
        stats: LoaderStats,
    ) -> None:
        # CPU pixels go into buffers used again once their batch is garbage (as slabs are):
        # a new 38 MB tensor per batch of 256 cost ~5 ms of page faults.
        self.buffers = (
            {
                name: SlabPool(batch_size * int(np.prod(spec.pixel_shape)), 2, shared=False)
                for name, spec in specs.items()
            }
            if device is None or device.type != "cuda"
            else {}
        )
        self.decoders = {
            name: self._decoder(name, spec, batch_size, device) for name, spec in specs.items()
        }
        self.budget = budget
        self.stats = stats
        self._running: object | None = None  # the iteration that has the decoders

    def run(self, batches: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        """``(number, batch)`` with every staged field decoded, in the order of ``batches``
        (``(number, Unpacked)``); each batch is submitted to the decoders as soon as the one
        before it is collected. A batch that failed (``Failed``), before the decoders or in
        them, is handed on in its place."""
        self.close()  # what an iteration left behind uncollected (it raised, and was let go)
        token = self._running = object()
        held: Unpacked | None = None
        try:
            for number, item in batches:
                if isinstance(item, Failed):
                    if held is not None:
                        done, held = held, None
                        yield self._collected(done)
                    yield number, item
                    continue
                done = held
                held = None
                collected = self._collected(done) if done is not None else None
                held = item  # (from here on, a failure discards it)
                self._submit(item)
                if collected is not None:
                    yield collected
            if held is not None:
                item, held = held, None
                yield self._collected(item)
        finally:
            # A break or an error: nothing may stay in a pipeline. (Not if another iteration
            # has the decoders now: this one was let go, and is only being collected.)
            if held is not None and self._running is token:
                for decoder in self.decoders.values():
                    decoder.discard()

    def _collected(self, item: Unpacked) -> tuple[int, Any]:
        try:
            return self._collect(item)
        except Exception as e:
            return item.number, Failed(e)

    def _submit(self, item: Unpacked) -> None:
        for name, decoder in self.decoders.items():
            decoder.submit(item.batch[name])

    def _collect(self, item: Unpacked) -> tuple[int, dict]:
        start = time.perf_counter()
        batch, pixels, bad, failed = item.batch, {}, [], {}
        for name, decoder in self.decoders.items():  # every one, so that none stays busy
            try:
                pixels[name] = decoder.collect(self._empty(name))
            except BadImagesError as e:
                bad += [(row, str(err)) for row, err in e.bad]
                failed[name] = e
        if failed and self.budget is None:
            first = min(failed.values(), key=lambda e: e.bad[0][0])
            raise first.bad[0][1] from first.__cause__
        rows = len(item.kept)
        if bad:
            keep = np.setdiff1d(np.arange(rows), [row for row, _ in bad])
            for name in failed:  # the others of the batch, decoded again without the bad
                self.decoders[name].submit(batch[name][keep])
                pixels[name] = self.decoders[name].collect(self._empty(name))
            for name in pixels:
                if name not in failed:
                    pixels[name] = pixels[name][torch.from_numpy(keep).to(pixels[name].device)]
            batch = {name: take_rows(value, keep) for name, value in batch.items()}
            self.stats.samples -= rows - len(keep)
            self.stats.skipped += rows - len(keep)
        if self.budget is not None:
            # every bad row of the batch as read: the workers' and DALI's (rows of what was
            # left), counted in their order
            bad = sorted(item.bad + [(int(item.kept[row]), why) for row, why in bad])
            self.budget.add(item.samples, bad)
        batch.update(pixels)
        self.stats.stage_seconds["decode"] += time.perf_counter() - start
        return item.number, batch

    def _empty(self, name: str):
        """``empty(shape)`` for field ``name``'s pixels: a uint8 tensor over a free buffer
        (None on the GPU)."""
        pool = self.buffers.get(name)
        if pool is None:
            return None

        def empty(shape: tuple) -> torch.Tensor:
            size = int(np.prod(shape))
            if size > pool.slab_size:  # (a batch larger than the loader's buffers)
                return torch.empty(shape, dtype=torch.uint8)
            lease = pool.lease(_grown(pool))
            return torch.from_numpy(lease[:size].reshape(shape))

        return empty

    def _decoder(self, name: str, spec, batch_size: int, device):
        if spec.backend == "dali":
            from ..decode.dali import DaliDecoder

            return DaliDecoder(name, spec, batch_size, device)
        from ..decode.nvimgcodec import NvImageCodecStage

        return NvImageCodecStage(name, spec, device, empty=self._empty(name))

    def close(self) -> None:
        for decoder in self.decoders.values():
            decoder.close()


def _grown(pool: SlabPool) -> int:
    """A free buffer of ``pool``, a new one if none is free."""
    slab = pool.acquire(grow=True)
    if slab is None:  # (acquire grows the pool rather than give none)
        raise RuntimeError("the buffer pool gave no buffer")
    return slab


def take_rows(value: Any, rows: np.ndarray) -> Any:
    """``value`` (a batch field: tensor, list, Ragged, EncodedBatch, array) at ``rows``."""
    if isinstance(value, torch.Tensor):
        return value[torch.from_numpy(rows).to(value.device)]
    if isinstance(value, list):
        return [value[i] for i in rows.tolist()]
    return value[rows]
