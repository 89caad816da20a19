"""A pool of batch slabs: shared-memory buffers that workers fill and the consumer reads.

Lifetime rule: a slab is handed to a worker to fill, then to the consumer as the tensors of one
batch. It returns to the pool only once every tensor of that batch (and every view of them) is
gone, so a training loop that keeps a batch (or part of it) never sees it overwritten. If the
consumer holds more batches than there are slabs, the pool grows instead of waiting, by half
its size at a time (one arena each time: a few file descriptors and mappings however many
batches are kept, and the new slabs' pages cost nothing until used).

Slabs are slices of a few large *arenas* of shared memory passed as file descriptors (anonymous
memory files: nothing named is left in /dev/shm even if the process is killed). Workers receive the
arenas once, at start; only slabs grown later travel with a task.

Memory is taken as it is used: an arena's pages are not touched until a worker first fills one
of its slabs, and the pool hands out the slab freed last, so a loop that never needs every slab
(the spare for a consumer that keeps a batch, say) never pays for the ones it does not use.
"""

from __future__ import annotations

import errno
import os
import threading
import weakref
from collections import deque
from typing import Callable, Literal, overload

import numpy as np
import torch

__all__ = ["SlabPool", "SlabMap", "out_of_descriptors"]


class SlabPool:
    def __init__(self, slab_size: int, count: int, *, shared: bool) -> None:
        self.slab_size = slab_size
        self.shared = shared
        self.arenas: list[torch.Tensor] = []
        self.places: list[tuple[int, int]] = []  # slab -> (arena, byte offset)
        self.arrays: list[np.ndarray] = []  # slab -> its bytes
        self._free: deque[int] = deque()
        self._leases: dict[int, tuple[weakref.ref, int]] = {}  # id(ref) -> (ref, slab)
        self._lock = threading.Lock()
        #: Called with each new arena (pinning registers it with CUDA).
        self.on_new_arena: Callable[[torch.Tensor], None] | None = None
        #: Open files a new shared arena must leave free: passing it to each worker takes a
        #: few for a moment (the loader sets it from its worker count).
        self.headroom = 8
        self._add_arena(count)

    def _add_arena(self, count: int) -> list[int]:
        size = self.slab_size * count
        if self.shared and self.arenas:
            # Refused here, not half-way through handing it to the workers: a worker left
            # waiting for a descriptor the consumer could not send would wait for good.
            spare = _spare_descriptors()
            if spare is not None and spare < self.headroom:
                raise OSError(
                    errno.EMFILE, out_of_descriptors("make a new batch buffer", limit=True)
                )
        try:
            arena = _shared_bytes(size) if self.shared else torch.empty(size, dtype=torch.uint8)
        except RuntimeError as e:
            if "Too many open files" not in str(e):
                raise
            raise OSError(
                errno.EMFILE, out_of_descriptors("make a new batch buffer", limit=True)
            ) from e
        if self.on_new_arena is not None:
            self.on_new_arena(arena)
        self.arenas.append(arena)
        whole = arena.numpy()
        new = []
        for k in range(count):
            self.places.append((len(self.arenas) - 1, k * self.slab_size))
            self.arrays.append(whole[k * self.slab_size : (k + 1) * self.slab_size])
            new.append(len(self.arrays) - 1)
        with self._lock:
            self._free.extend(new)
        return new

    def __len__(self) -> int:
        return len(self.arrays)

    @overload
    def acquire(self, grow: Literal[True]) -> int: ...
    @overload
    def acquire(self, grow: bool) -> int | None: ...
    def acquire(self, grow: bool) -> int | None:
        """A free slab's index; a new slab if none is free and ``grow``; else None."""
        with self._lock:
            if self._free:  # the slab freed last: its pages are the likeliest to be in use
                return self._free.pop()
        if not grow:
            return None
        new = self._add_arena(max(1, len(self.arrays) // 2))[0]
        with self._lock:
            self._free.remove(new)
        return new

    def free(self) -> int:
        """How many slabs are free now."""
        return len(self._free)

    def release(self, index: int) -> None:
        with self._lock:
            self._free.append(index)

    def lease(self, index: int) -> np.ndarray:
        """The bytes of slab ``index`` as a fresh array that returns the slab to the pool
        when it, and so every view of it handed to the consumer, is garbage."""
        view = np.frombuffer(memoryview(self.arrays[index]), dtype=np.uint8)  # pyright: ignore[reportArgumentType]
        # Views of ``view`` keep it (not the slab array) as their base, so it dies with the
        # last tensor of the batch; torch.from_numpy keeps its array alive the same way. A
        # plain weak reference with a callback (weakref.finalize costs ~2 us more a batch).
        ref = weakref.ref(view, self._lease_ended)
        self._leases[id(ref)] = (ref, index)
        return view

    def _lease_ended(self, ref: weakref.ref) -> None:
        self.release(self._leases.pop(id(ref))[1])


def out_of_descriptors(doing: str, limit: bool = False) -> str:
    """The error text for a loader at the open-file limit while ``doing``; ``limit``: say
    this process's limit (a worker's may not be the one that was reached)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if limit else None
    which = (
        f"limit of {soft} open files"
        if soft is not None and soft != resource.RLIM_INFINITY
        else "open-file limit"
    )
    return (
        f"fastload could not {doing}: the loader's processes are at their {which} "
        "(RLIMIT_NOFILE), and batch buffers are shared memory passed "
        "between them as file descriptors. Raise the limit (`ulimit -n 65536` in the "
        "shell, or resource.setrlimit(resource.RLIMIT_NOFILE, ...) before the loader "
        "starts), or keep fewer batches alive at once."
    )


def _spare_descriptors() -> int | None:
    """How many more files this process may open (None: no limit, or no way to count)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            return soft - len(os.listdir(listing))
        except OSError:
            continue
    return None


def _shared_bytes(size: int) -> torch.Tensor:
    """A uint8 tensor of ``size`` bytes of shared memory that torch passes between processes
    as a file descriptor, its pages not yet allocated: they are, one by one, as the workers
    first write them.

    An anonymous memory file (``memfd_create``) adopted by torch as its own fd-shared
    storage: ~0.5 ms for a 154 MB arena, where ``UntypedStorage._new_shared`` allocates and
    zeroes every page at once (``fallocate``: 21 ms here) and ``share_memory_()`` copies
    them. It has no name (nothing in /dev/shm, whose size, 64 MB in a default Docker
    container, does not limit it) and is gone with its last descriptor and mapping."""
    memfd_create = getattr(os, "memfd_create", None)
    from_fd = getattr(torch.UntypedStorage, "_new_shared_fd_cpu", None)
    if memfd_create is not None and from_fd is not None and size > 0:
        fd = memfd_create("fastload-batches", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.ftruncate(fd, size)
            storage = from_fd(fd, size)  # keeps its own duplicate of the descriptor
        finally:
            os.close(fd)
        return torch.empty(0, dtype=torch.uint8).set_(storage)
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:  # another torch: the copy, then
        return torch.empty(size, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(size))


class SlabMap:
    """A worker's view of the pool: slab index -> bytes, over arenas it was sent."""

    def __init__(self, arenas: list, places: list[tuple[int, int]], slab_size: int) -> None:
        self.slab_size = slab_size
        # Arenas stay torch tensors until used in the worker: a tensor pickles (spawn,
        # forkserver) as a handle to the same shared memory, a numpy array as a copy.
        self.arenas = list(arenas)
        self.places = list(places)

    def add(self, slab: int, arena, place: tuple[int, int]) -> None:
        """Learn a slab grown after start (its arena travelled with the task, or with an
        earlier one: then ``arena`` is None)."""
        while len(self.arenas) <= place[0]:
            self.arenas.append(None)
        if arena is not None:
            self.arenas[place[0]] = arena
        unknown: list = [None] * (slab + 1 - len(self.places))  # slabs not learnt yet
        self.places.extend(unknown)
        self.places[slab] = place

    def __getitem__(self, slab: int) -> np.ndarray:
        arena, offset = self.places[slab]
        whole = self.arenas[arena]
        if not isinstance(whole, np.ndarray):
            whole = self.arenas[arena] = whole.numpy()
        return whole[offset : offset + self.slab_size]
