"""The consumer's finishing of a batch: uint8 pixels into normalized float/bf16 images
(``ImageDecode(dtype=...)``), uint16/uint32 token rows into int64/int32 inputs and targets
(``TokenDecode``), with the compiled core's loops (fastload/decode/finish.py).

Where it runs:

- ``device="cuda"``: on the GPU, on the loader's copy stream right after the host-to-device
  copy of the slab's uint8 pixels / uint16 tokens (device.py): a quarter of float32's bytes
  cross PCIe;
- otherwise on the CPU: by the workers, into the slab, or here, into buffers of this
  module's own reused as slabs are (once every tensor of the batch is garbage): images the
  workers decode are finished by them, token rows and pixels DALI or nvImageCodec decoded in
  this process here (layout.py says why).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .layout import BatchLayout
from .slabs import SlabPool

__all__ = ["Finishing"]

# Results from this size up go into pooled buffers: a new 77 MB tensor (a batch of 256 bf16
# images) costs milliseconds of page faults each time, while a small one comes from memory
# the allocator just freed, cheaper than a pooled buffer's bookkeeping.
_POOLED_BYTES = 1 << 20


class Finishing:
    """What the consumer finishes in a batch of ``layout`` (batches of up to ``batch_size``
    samples): ``images`` (uint8 pixels from the slab or the decode stage, to finish) and
    ``tokens``. ``on_new_pool``: called with each buffer pool made (the loader pins them
    where it pins its slabs)."""

    def __init__(
        self,
        layout: BatchLayout,
        *,
        on_new_pool: Callable[[SlabPool], None] | None = None,
    ) -> None:
        specs = {**layout.decode, **layout.staged}
        self.images = {
            name: spec
            for name, spec in specs.items()
            if spec.finished and name not in layout.finished_in_workers
        }
        self.tokens = {n: s for n, s in layout.tokens.items() if n not in layout.rows}
        self.batch_size = layout.batch_size
        self.on_new_pool = on_new_pool
        self._pools: dict[str, SlabPool] = {}

    def __bool__(self) -> bool:
        return bool(self.images or self.tokens)

    def on_cpu(self, batch: dict, num_threads: int = 1) -> dict:
        """``batch`` with its fields finished on the CPU, into buffers of their own."""
        targets = {}
        for name, spec in self.images.items():
            pixels = batch[name]
            out = self._buffer(name, (len(pixels), *spec.shape), spec.dtype, spec.shape)
            batch[name] = spec.finish(pixels, out=out, num_threads=num_threads)
        for name, spec in self.tokens.items():
            rows = batch[name]
            n, length = rows.shape
            width = spec.out_length(length)
            if spec.shift:
                both = self._buffer(name, (2, n, width), spec.dtype, (2, width))
                batch[name], targets[name] = spec.finish(
                    rows, out=(both[0], both[1]), num_threads=num_threads
                )
            else:
                out = self._buffer(name, (n, width), spec.dtype, (width,))
                batch[name] = spec.finish(rows, out=out, num_threads=num_threads)
        return self._with_targets(batch, targets)

    def on_gpu(self, batch: dict, stream: Any) -> dict:
        """``batch`` (its fields to finish on a CUDA device already) with them finished by
        CUDA kernels queued on ``stream``, not waited for; new tensors allocated for it."""
        targets = {}
        for name, spec in self.images.items():
            batch[name] = spec.finish(batch[name], stream=stream)
        for name, spec in self.tokens.items():
            done = spec.finish(batch[name], stream=stream)
            if spec.shift:
                batch[name], targets[name] = done
            else:
                batch[name] = done
        return self._with_targets(batch, targets)

    def _with_targets(self, batch: dict, targets: dict) -> dict:
        """``batch`` with each token field's targets right after it."""
        if not targets:
            return batch
        out = {}
        for key, value in batch.items():
            out[key] = value
            if key in targets:
                out[self.tokens[key].targets_name(key)] = targets[key]
        return out

    def _buffer(
        self, name: str, shape: tuple, dtype: torch.dtype, per_sample: tuple
    ) -> torch.Tensor:
        """An empty ``shape`` tensor of ``dtype`` over a free buffer of field ``name``'s pool
        (made for ``batch_size`` samples of ``per_sample``), returned to the pool when it and
        every view of it are garbage; a new tensor for a small result, or a batch larger than
        the pool's buffers."""
        itemsize = dtype.itemsize
        size = int(np.prod(shape)) * itemsize
        if size < _POOLED_BYTES:  # (pinned by torch's caching allocator where slabs are)
            return torch.empty(shape, dtype=dtype, pin_memory=self.on_new_pool is not None)
        pool = self._pools.get(name)
        if pool is None:
            room = self.batch_size * int(np.prod(per_sample)) * itemsize
            room = max(64, -(-room // 64) * 64)  # every buffer of the arena 64-byte aligned
            pool = self._pools[name] = SlabPool(room, 2, shared=False)
            if self.on_new_pool is not None:
                self.on_new_pool(pool)
        if size > pool.slab_size:
            return torch.empty(shape, dtype=dtype)
        slab = pool.acquire(grow=True)
        if slab is None:  # (acquire grows the pool rather than give none)
            raise RuntimeError("the buffer pool gave no buffer")
        lease = pool.lease(slab)
        return torch.from_numpy(lease[:size]).view(dtype).view(shape)
