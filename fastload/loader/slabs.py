"""A pool of batch slabs: shared-memory buffers that workers fill and the consumer reads.

Lifetime rule: a slab is handed to a worker to fill, then to the consumer as the tensors of one
batch. It returns to the pool only once every tensor of that batch (and every view of them) is
gone, so a training loop that keeps a batch (or part of it) never sees it overwritten. If the
consumer holds more batches than there are slabs, the pool grows instead of waiting.

Slabs come from ``torch``'s shared memory (file descriptors, unlinked at once): nothing named is
left behind in /dev/shm even if the process is killed.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import Optional

import numpy as np
import torch

__all__ = ["SlabPool"]


class SlabPool:
    def __init__(self, slab_size: int, count: int, *, shared: bool) -> None:
        self.slab_size = slab_size
        self.shared = shared
        self.tensors: list[torch.Tensor] = []
        self.arrays: list[np.ndarray] = []
        self._free: deque[int] = deque()
        self._lock = threading.Lock()
        self.on_new_slab = None  # called with a new slab's index (pinning registers it)
        for _ in range(count):
            self._free.append(self._new())

    def _new(self) -> int:
        tensor = torch.empty(self.slab_size, dtype=torch.uint8)
        if self.shared:
            tensor.share_memory_()
        self.tensors.append(tensor)
        self.arrays.append(tensor.numpy())
        index = len(self.tensors) - 1
        if self.on_new_slab is not None:
            self.on_new_slab(index)
        return index

    def acquire(self, grow: bool) -> Optional[int]:
        """A free slab's index; a new slab if none is free and ``grow``; else None."""
        with self._lock:
            if self._free:
                return self._free.popleft()
        return self._new() if grow else None

    def release(self, index: int) -> None:
        with self._lock:
            self._free.append(index)

    @property
    def free(self) -> int:
        return len(self._free)

    def lease(self, index: int) -> np.ndarray:
        """The bytes of slab ``index`` as a fresh array that returns the slab to the pool
        when it, and so every view of it handed to the consumer, is garbage."""
        view = np.frombuffer(memoryview(self.arrays[index]), dtype=np.uint8)
        # Views of ``view`` keep it (not the slab array) as their base, so it dies with the
        # last tensor of the batch; torch.from_numpy keeps its array alive the same way.
        weakref.finalize(view, self.release, index)
        return view
