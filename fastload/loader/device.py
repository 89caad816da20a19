"""Pinning slabs and copying batches to the GPU (only used where CUDA is available).

Slabs are pinned by registering their memory with CUDA (no copy into a pinned buffer), so a
host-to-device copy is a DMA straight from the slab.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .slabs import SlabPool

__all__ = ["register_slabs", "to_device", "move"]


def register_slabs(pool: SlabPool) -> None:
    """Page-lock every arena of ``pool`` (and any it grows later) with cudaHostRegister."""
    cudart = torch.cuda.cudart()

    def register(arena: torch.Tensor) -> None:
        err = cudart.cudaHostRegister(arena.data_ptr(), arena.numel(), 0)
        if int(err) != 0:
            raise RuntimeError(f"cudaHostRegister of a {arena.numel()}-byte slab arena failed: "
                               f"{err}")  # fmt: skip

    for arena in pool.arenas:
        register(arena)
    pool.on_new_arena = register


_streams: dict = {}


def move(obj, device: torch.device):
    """A batch of any structure (tensors in dicts, lists, tuples, namedtuples; the general
    path's batches) with every tensor on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=device.type == "cuda" and obj.is_pinned())
    if isinstance(obj, Mapping):
        moved = {k: move(v, device) for k, v in obj.items()}
        try:
            return type(obj)(moved)
        except TypeError:
            return moved
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(move(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move(v, device) for v in obj)
    return obj


def to_device(batch: dict, device: torch.device) -> dict:
    """Copy a batch's tensors to ``device`` on a side stream; the current stream waits for the
    copy before anything queued after this call runs."""
    if device.type != "cuda":
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    stream = _streams.get(device)
    if stream is None:
        stream = _streams[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
               for k, v in batch.items()}  # fmt: skip
    torch.cuda.current_stream(device).wait_stream(stream)
    for v in out.values():
        if isinstance(v, torch.Tensor):
            v.record_stream(torch.cuda.current_stream(device))
    # The source slab must outlive the copy: sync the side stream before it can be recycled.
    stream.synchronize()
    return out
