"""Pinning slabs and copying batches to the GPU (only used where CUDA is available).

Slabs are pinned by registering their memory with CUDA (no copy into a pinned buffer), so a
host-to-device copy is a DMA straight from the slab. An arena is unregistered when it is
freed (a loader closed or its pool replaced): memory unmapped while still registered stays
page-locked, and a later arena mapped at the same address could not be registered.

A batch goes to the GPU on the loader's copy stream, a side stream, so the copy overlaps the
training step queued on the current stream: the tensors' bytes are copied (uint8 pixels and
uint16 tokens as they are in the slab), the finishing kernels run on that same stream right
after (finishing.py), and an event recorded after them is what the current stream waits for
before anything the training loop queues next; the host batch, and so its slab, is kept
(CopiesInFlight) until that event has completed, so a slab is never refilled under a copy.

Worker processes never touch CUDA: they are forked (the default start method) from a process
whose CUDA context may be initialised, which is safe only as long as the child makes no CUDA
call at all. Only this module and finishing.py (run in the training process) do; the workers
fill slabs through numpy and the compiled core's CPU loops. A registered arena's finalizer
unregisters it only in the process that registered it.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections import deque
from collections.abc import Mapping

import torch

from .finishing import Finishing
from .slabs import SlabPool

__all__ = [
    "pinning_wanted",
    "register_slabs",
    "to_device",
    "copy_stream",
    "move",
    "CopiesInFlight",
]


def pinning_wanted(pin_memory: bool, device: torch.device | None) -> bool:
    """Whether slabs are registered with CUDA (``pin_memory``, or batches for a CUDA
    device); torch's warning when pinning is asked for without a GPU."""
    if not (pin_memory or (device is not None and device.type == "cuda")):
        return False
    if not torch.cuda.is_available():
        if pin_memory:
            warnings.warn(
                "'pin_memory' argument is set as true but no accelerator is "
                "found, then device pinned memory won't be used.",
                stacklevel=3,
            )
        return False
    return True


def register_slabs(pool: SlabPool) -> None:
    """Page-lock every arena of ``pool`` (and any it grows later) with cudaHostRegister,
    until the arena is freed."""
    cudart = torch.cuda.cudart()
    if cudart is None:  # (only without CUDA, where no slab is pinned)
        raise RuntimeError("cannot pin the slabs: torch has no CUDA runtime")

    def register(arena: torch.Tensor) -> None:
        ptr = arena.data_ptr()
        err = cudart.cudaHostRegister(ptr, arena.numel(), 0)
        if int(err) != 0:
            raise RuntimeError(
                f"cudaHostRegister of a {arena.numel()}-byte slab arena failed: {err}"
            )
        # Runs as the arena's last reference goes (every batch view of it is gone), before
        # its memory is released; not at exit, when CUDA may be torn down already.
        weakref.finalize(arena, _unregister, cudart, ptr, os.getpid()).atexit = False

    for arena in pool.arenas:
        register(arena)
    pool.on_new_arena = register


def _unregister(cudart, ptr: int, pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked worker dropping its copy of the arena: CUDA is not its to call
    try:
        cudart.cudaHostUnregister(ptr)
    except Exception:
        pass  # CUDA already shut down: the process is ending


_streams: dict = {}


def move(obj, device: torch.device):
    """A batch of any structure (tensors in dicts, lists, tuples, namedtuples; the general
    path's batches) with every tensor on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=device.type == "cuda" and obj.is_pinned())
    if isinstance(obj, Mapping):
        moved = {k: move(v, device) for k, v in obj.items()}
        try:
            return type(obj)(moved)  # pyright: ignore[reportCallIssue]
        except TypeError:
            return moved
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(move(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move(v, device) for v in obj)
    return obj


class CopiesInFlight:
    """Host batches whose copies to the GPU may still be running, each with the event its
    copy recorded: holding a batch keeps its slab from being reused (slabs go back to the
    pool only when their tensors are garbage), so the consumer never waits for a copy; the
    GPU's current stream waits for it instead."""

    def __init__(self) -> None:
        self._copies: deque = deque()

    def add(self, event, batch: dict) -> None:
        self._copies.append((event, batch))
        while self._copies and self._copies[0][0].query():  # done: the slab may be reused
            self._copies.popleft()

    def wait(self) -> None:
        """Let every copy finish (before the slabs' memory may go)."""
        while self._copies:
            event, _ = self._copies.popleft()
            event.synchronize()


def to_device(
    batch: dict,
    device: torch.device,
    in_flight: CopiesInFlight | None,
    finishing: Finishing | None = None,
) -> dict:
    """Copy a batch's tensors to ``device`` on the copy stream and queue ``finishing``'s
    kernels after the copy on that stream, without waiting for either: the current stream
    waits for their event before anything queued after this call runs, and ``in_flight``
    keeps the source batch (its slab) until they are done. Tensors already on the device
    (pixels a GPU decoder made) are finished there as they are."""
    if device.type != "cuda":
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if in_flight is None:
        raise ValueError("a copy to a CUDA device needs a CopiesInFlight to keep its source")
    stream = copy_stream(device)
    current = torch.cuda.current_stream(device)
    with torch.cuda.stream(stream):  # not after the work queued on current: it overlaps it
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor) and v.device.type == "cuda":
                v.record_stream(stream)  # read on this stream too
                out[k] = v
            elif isinstance(v, torch.Tensor):
                out[k] = _copy(v, device)
            else:
                out[k] = v
        if finishing:
            out = finishing.on_gpu(out, stream)
        copied = torch.cuda.Event()
        copied.record(stream)
    current.wait_event(copied)
    for v in out.values():
        if isinstance(v, torch.Tensor):
            v.record_stream(current)  # made on the copy stream, used on the current one
    in_flight.add(copied, batch)
    return out


def copy_stream(device: torch.device):
    """The loader's side stream on ``device`` for copies to it (one per device and process;
    ``cuda`` is the current device)."""
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    stream = _streams.get(device)
    if stream is None:
        stream = _streams[device] = torch.cuda.Stream(device)
    return stream


# Unsigned types beyond uint8 have few CUDA ops in torch; a copy of their bits as the signed
# type of the same size is the same bytes.
_SAME_BITS = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def _copy(v: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``v`` copied to ``device`` without waiting (a DMA from registered or pinned memory)."""
    bits = _SAME_BITS.get(v.dtype)
    if bits is None:
        return v.to(device, non_blocking=True)
    return v.view(bits).to(device, non_blocking=True).view(v.dtype)
