"""The DataLoader's own plan: a (seed, epoch) order, this rank's share of it, and the state
that resumes it exactly (see fastload/plan/ for the order and partition themselves).

Epochs: an iteration uses the epoch given to ``set_epoch``, else the one after the previous
iteration's (0 first). Progress counts batches *handed to the user*, never the ones workers
prefetched, so a state saved inside the training loop resumes right after the last batch the
loop received. ``state_dict()`` is:

- after ``load_state_dict`` and before the next iteration: the loaded position;
- during an iteration, or after one with no ``set_epoch`` since: that epoch's position
  (``consumed == n`` once it is over, and loading that state starts the next epoch);
- otherwise: the start of the next iteration's epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

import numpy as np
from torch.utils.data import IterableDataset

from ..dataset import Dataset
from ..mix import Mix, fingerprint_of
from ..plan import EpochPlan, Partition, PlanStateError, current_topology
from ..plan.block_shuffle import DEFAULT_WINDOW, layout_digest
from ..plan.permutation import STREAM_AUGMENT, derive_key
from ..plan.state import STATE_VERSION, validate_state

__all__ = ["Planner", "PlanBatchSampler", "SHUFFLE_MODES", "wants_plan"]

SHUFFLE_MODES = ("global", "block")


def wants_plan(dataset: Any, shuffle: Any, seed: Optional[int], rank: Optional[int],
               world_size: Optional[int]) -> bool:  # fmt: skip
    """Whether the loader plans its own order (else it samples exactly as torch does)."""
    return (seed is not None or isinstance(shuffle, str) or isinstance(dataset, Mix)
            or rank is not None or world_size is not None)  # fmt: skip


@dataclass
class Cursor:
    """One iteration over one epoch plan, and how many of its batches the user has."""

    plan: EpochPlan
    mix_order: Any = None
    delivered: int = 0
    aug_seed: int = 0
    done: bool = False  # the iteration ran to its end

    def indices(self, j: int, mix: Optional[Mix]) -> np.ndarray:
        """Dataset indices of this rank's j-th batch of the iteration (int64)."""
        if mix is None:
            return self.plan.batch(j)
        return mix.indices(self.mix_order, self.plan.positions(j))

    def rng_seed(self, j: int) -> tuple[int, int]:
        """Augmentation seed of batch j: keyed by the batch's first position in the epoch, so a
        resumed run (same world and batch size) augments each sample as the first run did."""
        return (self.aug_seed, self.plan.partition.first_position(self.plan.rank, j))


class Planner:
    """Epoch plans for one DataLoader. ``shuffle``: False/None, True (= "global"), "global" or
    "block"; ``seed`` defaults to 0 (so every DDP rank agrees without being told)."""

    def __init__(self, dataset: Any, *, batch_size: Optional[int], drop_last: bool,
                 shuffle: Any, seed: Optional[int], rank: Optional[int],
                 world_size: Optional[int],
                 block_window: int = DEFAULT_WINDOW) -> None:  # fmt: skip
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
            raise ValueError("seed=, shuffle='global'/'block', rank= and world_size= need a "
                             "map-style dataset (with __len__ and __getitem__); an "
                             "IterableDataset orders and shards itself")  # fmt: skip
        if batch_size is None:
            raise ValueError("seed=, shuffle='global'/'block', rank= and world_size= need "
                             "automatic batching (batch_size=None is not supported there)")
        if isinstance(shuffle, str):
            if shuffle not in SHUFFLE_MODES:
                raise ValueError(f"shuffle must be True, False, 'global' or 'block', got "
                                 f"{shuffle!r}")  # fmt: skip
            self.mode, self.shuffle = shuffle, True
        else:
            self.mode, self.shuffle = "global", bool(shuffle)
        self.seed = 0 if seed is None else seed
        derive_key(self.seed, 0, STREAM_AUGMENT)  # seed must be an int: say so now
        self.dataset = dataset
        self.mix = dataset if isinstance(dataset, Mix) else None
        self.n = len(dataset)
        self.batch_size, self.drop_last = batch_size, bool(drop_last)
        self.fingerprint = fingerprint_of(dataset)
        self.blocks: Optional[np.ndarray] = None
        self.window: Optional[int] = None
        self.layout: Optional[str] = None
        self.mix_blocks: Optional[list[np.ndarray]] = None  # a Mix's, per dataset
        if self.mode == "block" and self.mix is not None:
            # Each pass over each dataset is in block order (plan.mix); the epoch's positions
            # are the mix's own, unshuffled, as with shuffle=True.
            self.mix_blocks = [_block_sizes(d) for d in self.mix.datasets]
            self.window = int(block_window)
            self.layout = layout_digest(np.concatenate(
                [[len(b) for b in self.mix_blocks], *self.mix_blocks]))  # fmt: skip
        elif self.mode == "block":
            self.blocks = _block_sizes(dataset)
            self.window, self.layout = int(block_window), layout_digest(self.blocks)
        self._rank, self._world = rank, world_size
        # Partition checks these now rather than on the first iteration.
        Partition(self.n, batch_size, 1 if world_size is None else world_size, drop_last)
        self._next_epoch = 0
        self._resume: Optional[tuple[int, int]] = None  # (epoch, consumed) from a state
        self.current: Optional[Cursor] = None

    # -- topology ---------------------------------------------------------------------------
    def topology(self) -> tuple[int, int]:
        """(rank, world size): as given, else from torch.distributed or the environment."""
        if self._rank is not None and self._world is not None:
            return self._rank, self._world
        topo = current_topology()
        return (topo.rank if self._rank is None else self._rank,
                topo.world_size if self._world is None else self._world)  # fmt: skip

    # -- epochs -----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._next_epoch = int(epoch)
        self.current = None
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None  # another epoch than the saved one starts afresh

    def _start(self, epoch: int) -> int:
        if self._resume is not None and self._resume[0] == epoch:
            return self._resume[1]
        return 0

    def _plan(self, epoch: int, start: int) -> EpochPlan:
        rank, world = self.topology()
        return EpochPlan(self.n, batch_size=self.batch_size, seed=self.seed, epoch=epoch,
                         shuffle=self.shuffle and self.mix is None, rank=rank, world_size=world,
                         drop_last=self.drop_last, start=start,
                         mode=self.mode if self.mix is None else "global",
                         blocks=self.blocks, window=self.window or DEFAULT_WINDOW,
                         fingerprint=self.fingerprint)  # fmt: skip

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """The plan an iteration of ``epoch`` would follow now (from a loaded position)."""
        return self._plan(epoch, self._start(epoch))

    def begin(self) -> Cursor:
        """The next iteration's cursor (consumes a loaded state that matches its epoch)."""
        epoch = self._next_epoch
        plan = self.epoch_plan(epoch)
        self._resume = None
        order = None if self.mix is None else \
            self.mix.order(self.seed, epoch, self.shuffle, self.mix_blocks,
                           self.window or DEFAULT_WINDOW)  # fmt: skip
        self.current = Cursor(plan, order, aug_seed=derive_key(self.seed, epoch, STREAM_AUGMENT))
        self._next_epoch = epoch + 1
        return self.current

    def track(self, cursor: Cursor, batches: Iterator[Any]) -> Iterator[Any]:
        """``batches``, counting each one as consumed as it is handed on."""
        for batch in batches:
            cursor.delivered += 1
            yield batch
        cursor.done = True

    def num_batches(self) -> int:
        """Batches of the running iteration, else of the next one (from a loaded position)."""
        cur = self.current
        if cur is not None and not cur.done:
            return cur.plan.num_batches
        rank, world = self.topology()
        epoch = self._next_epoch
        return Partition(self.n, self.batch_size, world, self.drop_last,
                         self._start(epoch)).num_batches  # fmt: skip

    # -- state ------------------------------------------------------------------------------
    def position(self) -> tuple[int, int]:
        """(epoch, positions consumed) that state_dict() describes (see the module doc)."""
        if self._resume is not None:
            return self._resume
        if self.current is not None:
            plan = self.current.plan
            return plan.epoch, plan.consumed_after(self.current.delivered)
        return self._next_epoch, 0

    def state_dict(self) -> dict[str, Any]:
        epoch, consumed = self.position()
        _, world = self.topology()
        return {
            "version": STATE_VERSION,
            "consumed": int(consumed),
            "n": self.n,
            "seed": int(self.seed),
            "epoch": int(epoch),
            "shuffle": self.shuffle,
            "mode": self.mode,
            "window": self.window,
            "layout": self.layout,
            "fingerprint": self.fingerprint,
            # for people reading a checkpoint; resuming does not need them to match
            "world_size": world,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        validate_state(state)  # version and field types first: the checks below read them
        self._check_setting("mode", state["mode"], self.mode)  # the plan's shape depends on it
        # The plan layer checks n, the fingerprint, the block layout and the position.
        # (A Mix's plan is over its positions, in block mode too; its fingerprint names every
        # dataset's content, and so their blocks.)
        EpochPlan.from_state_dict({**state, "mode": "global"} if self.mix is not None else state,
                                  n=self.n, batch_size=1, fingerprint=self.fingerprint,
                                  rank=0, world_size=1, blocks=self.blocks)  # fmt: skip
        # seeds are taken modulo 2**64 (as torch does): -1 and 2**64 - 1 are one seed
        self._check_setting("seed", int(state["seed"]) % 2**64, int(self.seed) % 2**64)
        self._check_setting("shuffle", state["shuffle"], self.shuffle)
        if self.mode == "block":
            self._check_setting("window", state["window"], self.window)
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        self._resume = (epoch, consumed)
        self.current = None
        # A finished epoch resumes at the start of the next one.
        self._next_epoch = epoch + 1 if consumed >= self.n else epoch

    @staticmethod
    def _check_setting(key: str, saved: Any, mine: Any) -> None:
        if saved != mine:
            raise PlanStateError(
                f"loader state mismatch: it was saved with {key}={saved!r}, this loader has "
                f"{key}={mine!r}. Build the loader with the settings of the run that saved it "
                "(seed, shuffle, block_window) to continue its epoch."
            )  # fmt: skip


class PlanBatchSampler:
    """The batches of the planner's current iteration, as torch's DataLoader (general path)
    or the fast path consume a ``batch_sampler``."""

    def __init__(self, planner: Planner, *, as_lists: bool) -> None:
        self.planner = planner
        self.batch_size = planner.batch_size
        self.as_lists = as_lists

    def __iter__(self) -> Iterator[Any]:
        cursor = self.planner.current or self.planner.begin()
        mix = self.planner.mix
        batches = cursor.plan.batches() if mix is None else \
            (cursor.indices(j, mix) for j in range(cursor.plan.num_batches))  # fmt: skip
        for idx in batches:
            yield idx.tolist() if self.as_lists else idx

    def __len__(self) -> int:
        return self.planner.num_batches()


def _block_sizes(dataset: Any) -> np.ndarray:
    """Records per block, block by block in index order (shard after shard)."""
    if not isinstance(dataset, Dataset):
        raise ValueError("shuffle='block' needs a fastload.Dataset, or a Mix of them (it "
                         "shuffles their storage blocks); use shuffle='global' for other "
                         "datasets")  # fmt: skip
    sizes = [dataset.shard_reader(s).blocks["n_records"] for s in range(len(dataset.shards))]
    return np.concatenate(sizes).astype(np.int64) if sizes else np.zeros(0, np.int64)
