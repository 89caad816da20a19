"""What the loader may ask of a dataset: the written contract between the read side and the loader.

:class:`fastload.Dataset` and :class:`fastload.Mix` (of Datasets with one schema) implement
:class:`Readable`; the loader's fast path touches nothing else of theirs. Where the loader needs
to know something about the storage (to choose how workers split the work, or to warn), it asks
:meth:`Readable.storage` for plain facts rather than looking at a dataset's insides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..format.schema import Schema

__all__ = ["Readable", "BatchGather", "Storage"]


@dataclass(frozen=True)
class Storage:
    """Facts about one fastload dataset's storage (a Mix has one per dataset)."""

    name: str  # its path or URL, for messages
    records: int
    stored_bytes: int  # the shards' bytes as stored (compressed blocks compressed)
    raw_bytes: int  # the records' bytes once decompressed
    blocks: int
    block_cache: int  # bytes of decompressed blocks each process keeps (Dataset(block_cache=))
    # bytes of decompressed copies of compressed blocks the local block cache may hold for all
    # processes (Dataset(cache_limit=)); 0 where blocks are not copied (remote, cache_dir=False)
    copy_limit: int = 0

    @property
    def compressed(self) -> bool:
        """Whether most blocks are compressed: compression that saved under 10% left most of
        them raw (JPEG, say), and raw blocks are mapped, never decompressed."""
        return self.stored_bytes < 0.9 * self.raw_bytes

    @property
    def copied(self) -> bool:
        """Whether its compressed blocks are decompressed once and kept as copies on local
        disk that every process maps (``fastload.read.copies``), the whole dataset fitting."""
        return self.compressed and 0 < self.raw_bytes <= self.copy_limit


class BatchGather(Protocol):
    """A one-call gather of some fixed-size fields (see :meth:`Readable.fast_gather`)."""

    def gather(self, indices: np.ndarray, views: dict[str, np.ndarray]) -> bool:
        """Fill ``views`` (the fields' ``(len(indices), ...)`` arrays) with records
        ``indices``. False, with nothing promised about ``views``, when it cannot (a block not
        at hand, an index out of range, a record that fails its checksum): the caller then
        reads the batch with :meth:`Readable.read_into`, which raises the right error."""
        ...


class Readable(Protocol):
    """A dataset the loader's fast path reads batches of records from.

    Records are numbered ``0 .. records - 1`` (a Mix: the concatenation of its datasets).
    Every method may be called in a loader worker, a forked or spawned copy of the dataset;
    none keeps anything that a fork would make wrong (what it opened starts afresh there)."""

    @property
    def schema(self) -> Schema | None:
        """The fields of every record. None where the records have no one schema (a Mix of
        datasets that differ): the loader then reads them with torch's DataLoader."""
        ...

    @property
    def remote(self) -> bool:
        """Whether reads go over the network: read-ahead hints (:meth:`prefetch`) and I/O
        counters (:meth:`io_stats_delta`) are worth their cost per batch only then."""
        ...

    def __len__(self) -> int:
        """Samples per epoch (a Dataset: its records; a Mix: its draws per epoch)."""
        ...

    def read_into(
        self,
        indices: Sequence[int] | np.ndarray,
        out: Mapping[str, np.ndarray] | None = None,
        *,
        image_views: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Read records ``indices``: fixed-size fields named in ``out`` straight into its
        arrays (the caller's buffer), the other fields returned by name (lists, or arrays for
        fixed-size fields not in ``out``). ``image_views``: image fields returned as views of
        the checked record bytes instead of copies. Raises a typed error naming the shard and
        record for a bad one (``CorruptRecordError``), IndexError for an index out of range."""
        ...

    def describe_record(self, index: int) -> str:
        """Record ``index`` as error messages name it: its shard (path or URL) and its place
        there."""
        ...

    def fast_gather(self, names: tuple[str, ...]) -> BatchGather | None:
        """A one-call gather of the fixed-size fields ``names`` for the calling thread to keep
        and reuse (not to share with other threads), or None where there is none (it pays
        only where a batch would otherwise cost read_into's work per shard and block)."""
        ...

    def block_numbers(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The number of the storage block holding each record (blocks numbered across the
        whole dataset), -1 for an index out of range. Workers that split a batch by block
        each decompress only their own blocks."""
        ...

    def block_sizes(self) -> np.ndarray:
        """Records per storage block, in the order of their numbers (for a block-order plan:
        ``shuffle="block"``)."""
        ...

    def prefetch(self, indices: Sequence[int] | np.ndarray) -> int:
        """A hint: the records about to be read, soonest first. Starts fetching their blocks
        in the background; returns how many were scheduled. Never raises for a bad index."""
        ...

    def prepare_workers(self) -> int:
        """Called before the loader forks its workers, which start with what this does
        (remote: shards opened, cached blocks mapped and checked; local and compressed: the
        decompressed copies of its blocks mapped and checked) instead of each doing it
        again. Returns the blocks made ready. Only a head start: the loader ignores its
        errors (each worker opens what it needs, and says why not)."""
        ...

    def io_stats_delta(self) -> dict:
        """The counters of remote reads in this process that moved since the last call."""
        ...

    def take_decompressed(self) -> int:
        """Blocks decompressed in this process since the last call (by any thread)."""
        ...

    @property
    def version(self) -> int:
        """A number that goes up whenever views of storage taken earlier in this process may
        have gone stale: a mapped block let go, a decompressed block dropped from the block
        cache, a shard opened, the dataset closed, a remote one forked. Whoever holds such
        views (a :class:`BatchGather`) lets go of them when it changes, instead of polling
        the counters of the layers below."""
        ...

    def storage(self) -> list[Storage]:
        """Facts about the storage of each fastload dataset whose records this reads."""
        ...
