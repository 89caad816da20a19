"""``fastload.Mix``: several datasets drawn in proportion to weights, for ``fastload.DataLoader``.

A Mix is two things:

- an *epoch* of ``len(mix)`` positions (default: the sum of the sizes), each drawing one sample
  of one dataset, in the proportions of ``weights`` (see :mod:`fastload.plan.mix_order` for the
  exact guarantee). Which dataset and record a position draws depends on the loader's (seed, epoch),
  so the DataLoader owns that mapping: it shards and resumes the positions like any other epoch.
- the *records*: ``mix[i]`` is record ``i`` of the concatenation of the datasets (dataset 0's
  records first), which is what the loader's workers read. When every dataset is a
  :class:`fastload.Dataset` with one schema, batches take the loader's fast path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import _core
from ..format.schema import Schema
from ..plan import MixOrder
from .contract import BatchGather, Storage
from .dataset import Dataset

__all__ = ["Mix"]


class Mix:
    """``Mix([ds_a, ds_b], weights=[0.7, 0.3])``: draw from map-style datasets by weight.

    ``weights`` default to the sizes (every sample once per epoch). ``length`` is the number of
    draws per epoch (default: the sum of the sizes); a dataset drawn more often than its size
    starts a fresh shuffled pass over itself. ``stratum``: positions per stratum, within which
    draws are shuffled (the proportions are exact at every stratum's end).
    """

    def __init__(
        self,
        datasets: Sequence[Any],
        weights: Sequence[float] | None = None,
        *,
        length: int | None = None,
        stratum: int = 4096,
    ) -> None:
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        # validates sizes, weights, length and stratum with the plan's own messages
        probe = MixOrder(self.sizes, weights, 0, length=length, stratum=stratum)
        self.weights = probe.weights
        self.length = probe.length
        self.stratum = probe.stratum
        self._weights_arg = None if weights is None else [float(w) for w in weights]
        self.offsets = np.cumsum([0, *self.sizes], dtype=np.int64)
        self.schema: Schema | None = _common_schema(self.datasets)
        #: Whether any of its fastload datasets is read over the network.
        self.remote = any(isinstance(d, Dataset) and d.remote for d in self.datasets)
        self._block_base: np.ndarray | None = None  # block_numbers: each dataset's first

    def __len__(self) -> int:
        """Draws per epoch (not the number of records: see ``records``)."""
        return self.length

    @property
    def records(self) -> int:
        """Records of all datasets together (the range of ``mix[i]``)."""
        return int(self.offsets[-1])

    # -- the epoch's draws --------------------------------------------------------------------
    def order(
        self, seed: int, epoch: int, shuffle: bool, blocks: list | None = None, window: int = 16
    ) -> MixOrder:
        """The draws of one epoch: position -> (dataset, record). ``blocks`` (each dataset's
        records per block): each pass over a dataset in block order (``shuffle="block"``)."""
        return MixOrder(
            self.sizes,
            self._weights_arg,
            seed,
            epoch=epoch,
            length=self.length,
            shuffle=shuffle,
            stratum=self.stratum,
            blocks=blocks,
            window=window,
        )

    def indices(self, order: MixOrder, positions: np.ndarray) -> np.ndarray:
        """Record indices (into the concatenation) drawn at ``positions`` of ``order``."""
        dataset, local = order[positions]
        return self.offsets[dataset] + local

    @property
    def fingerprint(self) -> str:
        """Names the datasets, weights, length and strata: a resumed epoch needs all of them."""
        parts = [_fingerprint(d) for d in self.datasets]
        text = "|".join([*parts, repr(self._weights_arg), str(self.length), str(self.stratum)])
        return f"mix:{_core.xxh64(text.encode()):016x}"

    # -- records ------------------------------------------------------------------------------
    def locate(self, index: int) -> tuple[int, int]:
        """``(dataset, record in it)`` of record ``index`` of the concatenation."""
        if not 0 <= index < self.records:
            raise IndexError(f"index {index} is out of range for a mix of {self.records} records")
        d = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return d, int(index) - int(self.offsets[d])

    def __getitem__(self, index: int) -> Any:
        d, i = self.locate(int(index))
        return self.datasets[d][i]

    def describe_record(self, index: int) -> str:
        """Record ``index`` of the concatenation as messages name it."""
        d, i = self.locate(int(index))
        inner = self.datasets[d]
        where = inner.describe_record(i) if hasattr(inner, "describe_record") else f"record {i}"
        return f"mix record {int(index)}: {where} of dataset {d}"

    def block_numbers(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """:meth:`fastload.Dataset.block_numbers` over the concatenation: the datasets' blocks
        numbered one dataset after another (-1 for an index out of range)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.full(len(idx), -1, np.int64)
        ok = np.flatnonzero((idx >= 0) & (idx < self.records))
        owner = np.searchsorted(self.offsets, idx[ok], side="right") - 1
        if self._block_base is None:  # (per batch in every worker: worked out once)
            self._block_base = np.cumsum(
                [0] + [sum(s.blocks for s in d.shards) for d in self.datasets]
            )
        base = self._block_base
        for d in sorted(set(owner.tolist())):
            rows = ok[owner == d]
            out[rows] = base[d] + self.datasets[d].block_numbers(idx[rows] - self.offsets[d])
        return out

    def read_into(
        self,
        indices: Sequence[int] | np.ndarray,
        out: Mapping[str, np.ndarray] | None = None,
        *,
        image_views: Iterable[str] = (),
    ) -> dict[str, Any]:
        """:meth:`fastload.Dataset.read_into` over the concatenation (fast path only)."""
        if self.schema is None:
            raise TypeError("read_into needs fastload.Datasets that share one schema")
        idx = np.asarray(indices, dtype=np.int64)
        owner = np.searchsorted(self.offsets, idx, side="right") - 1
        if len(idx) and ((idx < 0) | (idx >= self.records)).any():
            raise IndexError(f"indices out of range for a mix of {self.records} records")
        local = idx - self.offsets[owner] if len(idx) else idx
        groups = sorted(set(owner.tolist()))  # not np.unique: see Dataset.read_into
        if len(groups) <= 1:  # one dataset: straight into ``out``
            d = groups[0] if groups else 0
            return self.datasets[d].read_into(local, out, image_views=image_views)
        # Several: each dataset reads its rows into a scratch buffer, scattered into ``out``.
        out = dict(out or {})
        merged: dict[str, Any] = {}
        for d in groups:
            rows = np.flatnonzero(owner == d)
            scratch = {k: np.empty((len(rows), *a.shape[1:]), a.dtype) for k, a in out.items()}
            got = self.datasets[d].read_into(local[rows], scratch, image_views=image_views)
            for k, a in scratch.items():
                out[k][rows] = a
            for k, v in got.items():
                if isinstance(v, np.ndarray):
                    dst = merged.setdefault(k, np.empty((len(idx), *v.shape[1:]), v.dtype))
                    dst[rows] = v
                else:
                    dst = merged.setdefault(k, [None] * len(idx))
                    for r, value in zip(rows.tolist(), v):
                        dst[r] = value
        return {name: merged[name] for name in self.schema.names if name in merged}

    # -- the rest of the loader's contract (fastload.read.Readable), for Datasets ---------------
    def fast_gather(self, names: tuple[str, ...]) -> BatchGather | None:
        """None: a Mix's batches are read by read_into (each dataset its rows)."""
        return None

    def block_sizes(self) -> np.ndarray:
        """Records per storage block of the concatenation, numbered as by block_numbers."""
        sizes = [d.block_sizes() for d in self.datasets]
        return np.concatenate(sizes) if sizes else np.zeros(0, np.int64)

    def prefetch(self, indices: Sequence[int] | np.ndarray) -> int:
        """:meth:`fastload.Dataset.prefetch` of records ``indices`` of the concatenation, each
        dataset its own (never raises for a bad index)."""
        if not self.remote:
            return 0
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        idx = idx[(idx >= 0) & (idx < self.records)]
        owner = np.searchsorted(self.offsets, idx, side="right") - 1
        scheduled = 0
        for d in dict.fromkeys(owner.tolist()):  # in order of first use
            if isinstance(self.datasets[d], Dataset) and self.datasets[d].remote:
                mine = idx[owner == d] - self.offsets[d]
                scheduled += self.datasets[d].prefetch(mine)
        return scheduled

    def prepare_workers(self) -> int:
        """Each dataset's head start for forked workers; one that fails does not stop the
        others (see :meth:`fastload.Dataset.prepare_workers`)."""
        ready = 0
        for d in self.datasets:
            with contextlib.suppress(Exception):
                ready += d.prepare_workers()
        return ready

    def io_stats_delta(self) -> dict:
        """The remote-read counters that moved since the last call (they are the process's:
        asked of one remote dataset, once)."""
        remote = next((d for d in self.datasets if isinstance(d, Dataset) and d.remote), None)
        return remote.io_stats_delta() if remote is not None else {}

    def take_decompressed(self) -> int:
        """Blocks decompressed in this process since the last call, over every dataset."""
        return sum(d.take_decompressed() for d in self.datasets)

    @property
    def version(self) -> int:
        """Goes up when any dataset's does (see :attr:`fastload.Dataset.version`)."""
        return sum(d.version for d in self.datasets)

    def storage(self) -> list[Storage]:
        """Each fastload dataset's storage facts, in order."""
        return [s for d in self.datasets if isinstance(d, Dataset) for s in d.storage()]

    def __repr__(self) -> str:
        return (
            f"Mix(sizes={self.sizes}, weights={[round(w, 4) for w in self.weights]}, "
            f"length={self.length})"
        )


def _common_schema(datasets: list) -> Schema | None:
    if datasets and all(isinstance(d, Dataset) for d in datasets):
        first = datasets[0].schema
        if all(d.schema == first for d in datasets[1:]):
            return first
    return None


def _fingerprint(dataset: Any) -> str:
    value = getattr(dataset, "fingerprint", None)
    if isinstance(value, str):
        return value
    cls = type(dataset)
    return f"{cls.__module__}.{cls.__qualname__}:{len(dataset)}"


def fingerprint_of(dataset: Any) -> str:
    """A dataset's fingerprint: its own (fastload datasets: the manifest's content hash), else
    its class and length (a plain dataset has nothing better to offer)."""
    return _fingerprint(dataset)
