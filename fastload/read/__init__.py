"""The read side: datasets (:class:`Dataset`, :class:`Mix`) and their batched reads into a
caller's buffers.

The loader reaches them only through :class:`Readable` (contract.py), a ``typing.Protocol``
with a docstring per method: read a batch of records into a buffer, one-call gathers, block
numbers and sizes for a plan, read-ahead hints, worker preparation, I/O counters, storage
facts, and a ``version`` that says when views taken earlier went stale. Nothing above this
package touches the datasets' private state. See fastload/README.md for the modules.
"""

from .contract import BatchGather, Readable, Storage
from .dataset import Dataset
from .mix import Mix

__all__ = ["Dataset", "Mix", "Readable", "BatchGather", "Storage"]
