"""The DataLoader's planned order: a (seed, epoch) order, this rank's share of it, and the
state that resumes it exactly (see fastload/plan/ for the order and partition themselves).

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from ..plan import EpochPlan, Partition, PlanStateError, current_topology
from ..plan.block_shuffle import DEFAULT_WINDOW, layout_digest
from ..plan.permutation import STREAM_AUGMENT, derive_key
from ..plan.state import STATE_VERSION, check_int_field, validate_state
from ..read.dataset import Dataset
from ..read.mix import Mix, fingerprint_of

__all__ = [
    "Planner",
    "SHUFFLE_MODES",
    "wants_plan",
    "refuse_samplers",
]

SHUFFLE_MODES = ("global", "block")


def wants_plan(
    dataset: Any, shuffle: Any, seed: int | None, rank: int | None, world_size: int | None
) -> bool:
    """Whether the loader plans its own order (else it samples exactly as torch does)."""
    return (
        seed is not None
        or isinstance(shuffle, str)
        or isinstance(dataset, Mix)
        or rank is not None
        or world_size is not None
    )


def refuse_samplers(**given: Any) -> None:
    """The planned order decides the order and the DDP split: sampling arguments given too
    (``sampler``, ``batch_sampler``, ``generator``; None where not) are an error."""
    taken = [name for name, value in given.items() if value is not None]
    if taken:
        raise ValueError(
            f"{' and '.join(taken)} cannot be combined with seed=, "
            "shuffle='global'/'block', rank=, world_size= or a Mix: the "
            "loader's plan decides the order and the DDP split"
        )


@dataclass
class Cursor:
    """One iteration over one epoch plan, and which of its batches the user has.

    Batches are numbered by the plan (``plan.batch(j)``). ``skip``: batches of the plan the
    user already had before a resume (handed out ahead of order, ``in_order=False``); the
    iteration's i-th batch is the plan's i-th batch not skipped (:meth:`plan_batch`)."""

    plan: EpochPlan
    mix_order: Any = None
    delivered: int = 0  # the plan's first batches, all handed out
    aug_seed: int = 0
    done: bool = False  # the iteration ran to its end
    skip: tuple[int, ...] = ()  # sorted
    ahead: set[int] = field(default_factory=set)  # handed out past ``delivered``

    def __post_init__(self) -> None:
        for j in self.skip:
            self.handed_out(j)

    def plan_batch(self, i: int) -> int:
        """The plan's number of the iteration's i-th batch."""
        j = i
        for s in self.skip:  # a few: at most the batches in flight when the state was saved
            if s > j:
                break
            j += 1
        return j

    def handed_out(self, j: int) -> None:
        """The user has the plan's batch j now."""
        if j != self.delivered:
            self.ahead.add(j)
            return
        self.delivered += 1
        while self.delivered in self.ahead:
            self.ahead.remove(self.delivered)
            self.delivered += 1

    def indices(self, j: int, mix: Mix | None) -> np.ndarray:
        """Dataset indices of this rank's j-th batch of the iteration (int64)."""
        if mix is None:
            return self.plan.batch(j)
        return mix.indices(self.mix_order, self.plan.positions(j))

    def rng_seed(self, i: int) -> tuple[int, int]:
        """Augmentation seed of the iteration's i-th batch: keyed by the batch's first position
        in the epoch, so a resumed run (same world and batch size) augments each sample as the
        first run did."""
        j = self.plan_batch(i)
        return (self.aug_seed, self.plan.partition.first_position(self.plan.rank, j))


class Planner:
    """Epoch plans for one DataLoader. ``shuffle``: False/None, True (= "global"), "global" or
    "block"; ``seed`` defaults to 0 (so every DDP rank agrees without being told)."""

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int | None,
        drop_last: bool,
        shuffle: Any,
        seed: int | None,
        rank: int | None,
        world_size: int | None,
        block_window: int = DEFAULT_WINDOW,
    ) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
            raise ValueError(
                "seed=, shuffle='global'/'block', rank= and world_size= need a "
                "map-style dataset (with __len__ and __getitem__); an "
                "IterableDataset orders and shards itself"
            )
        if batch_size is None:
            raise ValueError(
                "seed=, shuffle='global'/'block', rank= and world_size= need "
                "automatic batching (batch_size=None is not supported there)"
            )
        if isinstance(shuffle, str):
            if shuffle not in SHUFFLE_MODES:
                raise ValueError(
                    f"shuffle must be True, False, 'global' or 'block', got {shuffle!r}"
                )
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
        self.blocks: np.ndarray | None = None
        self.window: int | None = None
        self.layout: str | None = None
        self.mix_blocks: list[np.ndarray] | None = None  # a Mix's, per dataset
        if self.mode == "block" and self.mix is not None:
            # Each pass over each dataset is in block order (plan/mix_order.py); the epoch's
            # positions are the mix's own, unshuffled, as with shuffle=True.
            self.mix_blocks = [_block_sizes(d) for d in self.mix.datasets]
            self.window = int(block_window)
            self.layout = layout_digest(
                np.concatenate([[len(b) for b in self.mix_blocks], *self.mix_blocks])
            )
        elif self.mode == "block":
            self.blocks = _block_sizes(dataset)
            self.window, self.layout = int(block_window), layout_digest(self.blocks)
        self._rank, self._world = rank, world_size
        # Partition checks these now rather than on the first iteration.
        Partition(self.n, batch_size, 1 if world_size is None else world_size, drop_last)
        self._next_epoch = 0
        # (epoch, consumed, batches handed out ahead of order) from a loaded state
        self._resume: tuple[int, int, tuple[int, ...]] | None = None
        self.current: Cursor | None = None

    # -- topology ---------------------------------------------------------------------------
    def topology(self) -> tuple[int, int]:
        """(rank, world size): as given, else from torch.distributed or the environment."""
        if self._rank is not None and self._world is not None:
            return self._rank, self._world
        topo = current_topology()
        return (
            topo.rank if self._rank is None else self._rank,
            topo.world_size if self._world is None else self._world,
        )

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

    def _skip(self, epoch: int) -> tuple[int, ...]:
        if self._resume is not None and self._resume[0] == epoch:
            return self._resume[2]
        return ()

    def _plan(self, epoch: int, start: int) -> EpochPlan:
        rank, world = self.topology()
        return EpochPlan(
            self.n,
            batch_size=self.batch_size,
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle and self.mix is None,
            rank=rank,
            world_size=world,
            drop_last=self.drop_last,
            start=start,
            mode=self.mode if self.mix is None else "global",
            blocks=self.blocks,
            window=self.window or DEFAULT_WINDOW,
            fingerprint=self.fingerprint,
        )

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """The plan an iteration of ``epoch`` would follow now (from a loaded position)."""
        return self._plan(epoch, self._start(epoch))

    def begin(self) -> Cursor:
        """The next iteration's cursor (consumes a loaded state that matches its epoch)."""
        epoch = self._next_epoch
        self.current = self._cursor(epoch)
        self._resume = None
        self._next_epoch = epoch + 1
        return self.current

    def peek(self) -> Cursor:
        """The running iteration's cursor, else the one the next iteration would begin
        with (nothing changes)."""
        cur = self.current
        return cur if cur is not None and not cur.done else self._cursor(self._next_epoch)

    def _cursor(self, epoch: int) -> Cursor:
        order = (
            None
            if self.mix is None
            else self.mix.order(
                self.seed, epoch, self.shuffle, self.mix_blocks, self.window or DEFAULT_WINDOW
            )
        )
        return Cursor(
            self.epoch_plan(epoch),
            order,
            aug_seed=derive_key(self.seed, epoch, STREAM_AUGMENT),
            skip=self._skip(epoch),
        )

    def epoch_batches(self) -> int:
        """This rank's batches in a whole epoch (``len(loader)``, as torch's: a resumed
        epoch has fewer left)."""
        rank, world = self.topology()
        return Partition(self.n, self.batch_size, world, self.drop_last).num_batches

    def epoch_samples(self) -> int:
        """This rank's samples in a whole epoch (padding included, the dropped tail not)."""
        rank, world = self.topology()
        part = Partition(self.n, self.batch_size, world, self.drop_last)
        last = part.last_batch_size if part.num_batches > part.full_steps else 0
        return part.full_steps * self.batch_size + last

    def num_batches(self) -> int:
        """Batches of the running iteration, else of the next one (from a loaded position)."""
        cur = self.current
        if cur is not None and not cur.done:
            return cur.plan.num_batches - len(cur.skip)
        rank, world = self.topology()
        epoch = self._next_epoch
        return Partition(
            self.n, self.batch_size, world, self.drop_last, self._start(epoch)
        ).num_batches - len(self._skip(epoch))

    def info(self) -> dict[str, int]:
        """The current epoch's (else the next one's) epoch, rank, world size, and samples
        padded and dropped over all ranks."""
        cur = self.current
        if cur is not None:
            plan, epoch = cur.plan, cur.plan.epoch
        else:
            epoch = self.position()[0]
            plan = self.epoch_plan(epoch)
        return {
            "epoch": epoch,
            "rank": plan.rank,
            "world_size": plan.world_size,
            "padding": plan.padding,
            "dropped": plan.dropped,
        }

    # -- state ------------------------------------------------------------------------------
    def position(self) -> tuple[int, int, tuple[int, ...]]:
        """(epoch, positions consumed, this rank's batches handed out past them: batch k is
        the k-th of a plan resumed there) that state_dict() describes (see the module doc)."""
        if self._resume is not None:
            return self._resume
        cur = self.current
        if cur is not None:
            ahead = tuple(sorted(j - cur.delivered for j in cur.ahead))
            return cur.plan.epoch, cur.plan.consumed_after(cur.delivered), ahead
        return self._next_epoch, 0, ()

    def state_dict(self) -> dict[str, Any]:
        epoch, consumed, ahead = self.position()
        rank, world = self.topology()
        state = {
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
        if ahead:
            # in_order=False: this rank also had these batches past ``consumed`` (each rank
            # its own: this state resumes this rank only, with this world and batch size)
            state.update(ahead=list(ahead), rank=rank)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        validate_state(state)  # version and field types first: the checks below read them
        _check_loader_fields(state)
        self._check_setting("mode", state["mode"], self.mode)  # the plan's shape depends on it
        # The plan layer checks n, the fingerprint, the block layout and the position.
        # (A Mix's plan is over its positions, in block mode too; its fingerprint names every
        # dataset's content, and so their blocks.)
        EpochPlan.from_state_dict(
            {**state, "mode": "global"} if self.mix is not None else state,
            n=self.n,
            batch_size=1,
            fingerprint=self.fingerprint,
            rank=0,
            world_size=1,
            blocks=self.blocks,
        )
        # seeds are taken modulo 2**64 (as torch does): -1 and 2**64 - 1 are one seed
        self._check_setting("seed", int(state["seed"]) % 2**64, int(self.seed) % 2**64)
        self._check_setting("shuffle", state["shuffle"], self.shuffle)
        if self.mode == "block":
            self._check_setting("window", state["window"], self.window)
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        ahead = self._ahead_of(state)
        self._resume = (epoch, consumed, ahead)
        self.current = None
        # A finished epoch resumes at the start of the next one.
        self._next_epoch = epoch + 1 if consumed >= self.n else epoch

    def _ahead_of(self, state: Mapping[str, Any]) -> tuple[int, ...]:
        """The batches a state saved with ``in_order=False`` says its rank had past its
        position; they are skipped when it resumes, so only on that rank, with the same world
        and batch size (its other ranks had other batches past theirs)."""
        ahead = state.get("ahead") or []
        if not ahead:
            return ()
        if not (
            isinstance(ahead, list)
            and all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in ahead)
        ):
            raise PlanStateError(
                f"plan state is corrupted: 'ahead' should be a list of positive ints, got {ahead!r}"
            )
        rank, world = self.topology()
        saved = (state.get("rank"), state.get("world_size"), state.get("batch_size"))
        if saved != (rank, world, self.batch_size):
            raise PlanStateError(
                f"this state was saved by rank {saved[0]} of {saved[1]} (batch_size "
                f"{saved[2]}) while batches were handed out of order (in_order=False): it "
                f"resumes only that rank, with that world size and batch size (this loader: "
                f"rank {rank} of {world}, batch_size {self.batch_size}). Save and load each "
                "rank's own state_dict() with in_order=False."
            )
        return tuple(sorted(set(ahead)))

    @staticmethod
    def _check_setting(key: str, saved: Any, mine: Any) -> None:
        if saved != mine:
            raise PlanStateError(
                f"loader state mismatch: it was saved with {key}={saved!r}, this loader has "
                f"{key}={mine!r}. Build the loader with the settings of the run that saved it "
                "(seed, shuffle, block_window) to continue its epoch."
            )


def _check_loader_fields(state: Mapping[str, Any]) -> None:
    """The fields a loader adds to a plan state (for readers, and to resume out-of-order
    batches): None, or ints in range; PlanStateError naming the field."""
    for key, low in (("world_size", 1), ("batch_size", 1), ("rank", 0)):
        if state.get(key) is not None:
            check_int_field(key, state[key], low)
    rank, world = state.get("rank"), state.get("world_size")
    if rank is not None and world is not None and rank >= world:
        raise PlanStateError(
            f"plan state is corrupted: field 'rank' = {rank} is not a rank of world_size {world}"
        )


def _block_sizes(dataset: Any) -> np.ndarray:
    """Records per block, block by block in index order (shard after shard)."""
    if not isinstance(dataset, Dataset):
        raise ValueError(
            "shuffle='block' needs a fastload.Dataset, or a Mix of them (it "
            "shuffles their storage blocks); use shuffle='global' for other "
            "datasets"
        )
    return dataset.block_sizes()
