"""`EpochPlan`: the batches of dataset indices one rank reads in one epoch, and how to resume.

A plan is a pure function of (n, seed, epoch, order mode, partition, start): it holds no
per-sample array, so building one costs the same for 10^3 and 10^9 samples (block mode holds
O(#blocks)). The only progress to save is ``consumed``, the number of positions of the epoch's
order every rank has got past. Resuming from it with any world size, batch size or worker count
serves every remaining sample exactly once (see partition.py for padding and drop_last).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import PlanStateError
from .block_shuffle import DEFAULT_WINDOW, BlockShuffle, layout_digest
from .partition import Partition
from .permutation import IntArray, Order, Permutation
from .topology import current_topology

__all__ = ["STATE_VERSION", "EpochPlan", "PlanStateError", "validate_state", "check_int_field"]

STATE_VERSION = 1
_MODES = ("global", "block")


class EpochPlan:
    """This rank's batches for one epoch.

    - ``mode="global"``: a keyed bijection of all n samples (local, uncompressed data).
    - ``mode="block"``: shuffled by block, then within windows of ``window`` blocks, so reads
      stay large (compressed or remote data); ``blocks`` gives the records per block.

    ``rank`` / ``world_size`` default to :func:`current_topology`. ``start`` is the number of
    positions already consumed (from a saved state); ``num_batches`` and ``batch(j)`` count from
    there. ``fingerprint`` names the dataset (e.g. its manifest hash) so that a state saved for
    another dataset is refused.
    """

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        start: int = 0,
        mode: str = "global",
        blocks: npt.ArrayLike | None = None,
        window: int = DEFAULT_WINDOW,
        fingerprint: str = "",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if rank is None or world_size is None:
            topo = current_topology()
            rank = topo.rank if rank is None else rank
            world_size = topo.world_size if world_size is None else world_size
        self.partition = Partition(n, batch_size, world_size, drop_last, start)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        self.n, self.seed, self.epoch, self.shuffle = int(n), seed, int(epoch), bool(shuffle)
        self.rank, self.world_size, self.mode = int(rank), int(world_size), mode
        self.fingerprint = str(fingerprint)
        self.window: int | None = None
        self.layout: str | None = None
        self.order: Order
        if mode == "block":
            if blocks is None:
                raise ValueError("mode='block' needs blocks= (the number of records per block)")
            self.order = BlockShuffle(blocks, seed, epoch, window=window, shuffle=shuffle)
            if self.order.n != self.n:
                raise ValueError(f"blocks hold {self.order.n} records in all, but n = {self.n}")
            self.window, self.layout = self.order.window, layout_digest(blocks)
        else:
            self.order = Permutation(n, seed, epoch, shuffle)

    # -- batches ------------------------------------------------------------------------------

    @property
    def start(self) -> int:
        return self.partition.start

    @property
    def num_batches(self) -> int:
        """This rank's batches from ``start`` (equal on every rank)."""
        return self.partition.num_batches

    @property
    def padding(self) -> int:
        """Samples repeated over all ranks to even out the last step (drop_last=False)."""
        return self.partition.padding

    @property
    def dropped(self) -> int:
        """Samples no rank serves this epoch (drop_last=True)."""
        return self.partition.dropped

    def __len__(self) -> int:
        return self.num_batches

    def positions(self, j: int) -> IntArray:
        """Positions of the epoch's order in this rank's j-th batch."""
        return self.partition.positions(self.rank, j)

    def batch(self, j: int) -> IntArray:
        """Dataset indices (int64) of this rank's j-th batch from ``start``."""
        return np.asarray(self.order[self.positions(j)])

    def __iter__(self) -> Iterator[IntArray]:
        return self.batches()

    def batches(self, first: int = 0, chunk: int = 64) -> Iterator[IntArray]:
        """This rank's batches from the ``first``-th on, as :meth:`batch` gives them: full
        steps are looked up in the order ``chunk`` batches at a time (one call instead of one
        per batch: most of the consumer's work per small batch was that call's overhead)."""
        part, full = self.partition, self.partition.full_steps
        for lo in range(first, full, chunk):
            hi = min(lo + chunk, full)
            rows = part.positions_of(self.rank, lo, hi)
            yield from np.asarray(self.order[rows.reshape(-1)]).reshape(rows.shape)
        for j in range(max(first, full), self.num_batches):
            yield self.batch(j)

    def worker_batches(self, worker: int, num_workers: int) -> range:
        """The batch numbers j that worker ``worker`` of ``num_workers`` builds (round-robin)."""
        return Partition.worker_batches(self.num_batches, worker, num_workers)

    # -- resumption ---------------------------------------------------------------------------

    def consumed_after(self, batches_done: int) -> int:
        """Positions consumed once every rank has yielded ``batches_done`` of its batches."""
        return self.partition.consumed_after(batches_done)

    def state_dict(self, batches_done: int = 0) -> dict[str, Any]:
        """The state to save after this rank has yielded ``batches_done`` batches of this plan
        (every rank has, in DDP's lockstep). Plain ints and strings: JSON-safe."""
        return {
            "version": STATE_VERSION,
            "consumed": self.consumed_after(batches_done),
            "n": self.n,
            "seed": int(self.seed),
            "epoch": self.epoch,
            "shuffle": self.shuffle,
            "mode": self.mode,
            "window": self.window,
            "layout": self.layout,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Any],
        *,
        n: int,
        batch_size: int,
        fingerprint: str = "",
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        blocks: npt.ArrayLike | None = None,
    ) -> EpochPlan:
        """The plan that continues a saved one, for this dataset (``n``, ``fingerprint``,
        ``blocks``) and the current topology, which may differ from the saved one. The order
        (seed, epoch, shuffle, mode, window) comes from the state."""
        s = _validated(state)
        if s["mode"] == "block" and blocks is None:
            raise PlanStateError(
                "plan state was saved with mode='block': continuing it "
                "needs blocks= (the dataset's block layout)"
            )
        now = {"n": n, "fingerprint": str(fingerprint)}
        if s["mode"] == "block" and blocks is not None:
            now["layout"] = layout_digest(blocks)
        for key, value in now.items():
            if s[key] != value:
                raise PlanStateError(
                    f"plan state mismatch: it was saved for {key} = {s[key]!r}, but this "
                    f"dataset has {key} = {value!r}. Load a state saved by a loader over the same "
                    "dataset, or start the epoch afresh without it."
                )
        if s["consumed"] > n:
            raise PlanStateError(f"plan state is corrupted: consumed = {s['consumed']} > n = {n}")
        window = DEFAULT_WINDOW if s["window"] is None else s["window"]
        return cls(
            n,
            batch_size=batch_size,
            seed=s["seed"],
            epoch=s["epoch"],
            shuffle=s["shuffle"],
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            start=s["consumed"],
            mode=s["mode"],
            blocks=blocks,
            window=window,
            fingerprint=fingerprint,
        )

    def __repr__(self) -> str:
        return (
            f"EpochPlan(n={self.n}, epoch={self.epoch}, mode={self.mode!r}, "
            f"rank={self.rank}/{self.world_size}, start={self.start}, "
            f"batches={self.num_batches})"
        )


_FIELDS = {
    "version": int,
    "consumed": int,
    "n": int,
    "seed": int,
    "epoch": int,
    "shuffle": bool,
    "mode": str,
    "fingerprint": str,
}


def validate_state(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """``state`` if it is a well-formed plan state of this version (fields and types only;
    :meth:`EpochPlan.from_state_dict` also checks it against the dataset), else PlanStateError."""
    return _validated(state)


def check_int_field(key: str, value: Any, low: int, high: int = 2**63 - 1) -> None:
    """PlanStateError naming ``key`` unless ``value`` is an int in [low, high] (for the fields
    a loader adds to a plan state)."""
    _in_range(key, value, low, high)


def _validated(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """``state`` after checking it is a plan state of this version, field by field (type
    and range); PlanStateError naming the field otherwise."""
    if not isinstance(state, Mapping):
        raise PlanStateError(f"plan state must be a mapping, got {type(state).__name__}")
    for key, kind in _FIELDS.items():
        value = state.get(key)
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise PlanStateError(
                f"plan state is corrupted: field {key!r} should be {kind.__name__}, got "
                f"{_shown(value)}"
            )
    if state["version"] != STATE_VERSION:
        raise PlanStateError(
            f"plan state version {state['version']} is not supported "
            f"(this fastload reads version {STATE_VERSION})"
        )
    if state["mode"] not in _MODES:
        raise PlanStateError(
            f"plan state is corrupted: field 'mode' should be one of {_MODES}, got "
            f"mode={state['mode']!r}"
        )
    for key in ("consumed", "n", "epoch"):
        _in_range(key, state[key], 0, _MAX_INT)
    _in_range("seed", state["seed"], -(2**63), 2**64 - 1)
    if not state["fingerprint"].isprintable() or len(state["fingerprint"]) > 256:
        raise PlanStateError(
            f"plan state is corrupted: field 'fingerprint' = {_shown(state['fingerprint'])}"
        )
    window, layout = state.get("window"), state.get("layout")
    if window is not None:
        _in_range("window", window, 1, _MAX_INT)
    if layout is not None and not (isinstance(layout, str) and _HEX16.fullmatch(layout)):
        raise PlanStateError(
            f"plan state is corrupted: field 'layout' should be a block layout's digest (16 hex "
            f"digits) or None, got {_shown(layout)}"
        )
    if state["mode"] == "block" and (window is None or layout is None):
        raise PlanStateError(
            "plan state is corrupted: a block-mode state needs an int 'window' and a str 'layout'"
        )
    return state


_MAX_INT = 2**63 - 1
_HEX16 = re.compile(r"[0-9a-f]{16}")


def _in_range(key: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PlanStateError(
            f"plan state is corrupted: field {key!r} should be an int in [{low}, {high}], got "
            f"{_shown(value)}"
        )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
