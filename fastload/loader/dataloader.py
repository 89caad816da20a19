"""``fastload.DataLoader``: a subclass of torch's DataLoader, with fastload's speed.

torch's ``DataLoader.__init__`` checks the arguments (its errors, in its order) and sets the
attributes (``dataset``, ``batch_size``, ``sampler``, ``batch_sampler``, ``collate_fn``,
``num_workers``, ...), which hold what the loader really uses; it also refuses setting
``batch_size``, ``sampler`` and the like once built. What differs is iteration
(iteration.py):

- with a :class:`fastload.Dataset` (and no custom ``collate_fn``) batches come from the fast
  path (fastpath.py): workers gather fixed-size fields straight into shared-memory slabs
  with the compiled core and decode images in place; the consumer receives tensors that
  *are* the slab (no copy, no pickling of sample bytes);
- any other dataset, or a custom ``collate_fn``, runs on torch's own iterators
  (general.py), so it yields exactly what torch would.

Either way the loader keeps its position (planned_order.py with ``seed=``, torch_order.py
without) for ``state_dict()``. fastload's own arguments are attributes of the same names,
so a framework that rebuilds a loader from its ``__init__`` signature and attributes (as
Lightning does to put in a DistributedSampler) gets the same loader back.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Callable, TypeVar

import torch
from torch.utils.data import IterableDataset, Sampler
from torch.utils.data._utils.collate import default_collate, default_convert

from ..errors import PlanStateError
from .advice import warn_about_block_cache, warn_if_unsplit
from .badsamples import BadSampleBudget, SkipBadSamples, check_counts, policy_of
from .fastpath import FastPath, Settings
from .general import check_workers, stateful_dataset, worker_part
from .iteration import LoaderIterator, Loading
from .layout import ImageDecode, TokenDecode
from .options import WORKER_TYPES, check_fast_options, device_of, fast_capable
from .plan_samplers import PlanBatchSampler, PlanSampler, given_plan
from .planned_order import Planner, refuse_samplers, wants_plan
from .splits import SHARED_BLOCKS
from .stats import LoaderStats
from .torch_order import TorchOrder, validate_torch_state
from .variable import VariableSpec

__all__ = ["DataLoader", "OWN_ARGUMENTS"]

_T_co = TypeVar("_T_co", covariant=True)

#: fastload's own arguments of ``DataLoader.__init__``: each is kept as the attribute of
#: the same name (a framework rebuilding the loader passes them back).
OWN_ARGUMENTS = (
    "snapshot_every_n_steps",
    "decode",
    "transform",
    "variable",
    "worker_type",
    "device",
    "seed",
    "rank",
    "world_size",
    "block_window",
    "bad_samples",
)


class DataLoader(torch.utils.data.DataLoader[_T_co]):
    """A drop-in replacement for ``torch.utils.data.DataLoader``: a subclass of it.

    Arguments up to ``in_order`` have torch's meaning; ``snapshot_every_n_steps`` has
    torchdata's StatefulDataLoader's. fastload adds, keyword-only:

    - ``decode``: ``{field: ImageDecode(...)}``, image fields to decode (and augment) into
      fixed-size pixels in the workers, or by NVIDIA DALI or nvImageCodec in this process
      (``backend="dali"`` / ``"nvimgcodec"``: on the GPU with ``device="cuda"``), uint8 or
      normalized float/bf16 (``dtype=``, ``normalize=``; imagedecode.py); and
      ``{field: TokenDecode(...)}``, token rows widened (and shifted into targets);
      finished on the GPU after the copy with ``device="cuda"`` (finishing.py);
    - ``transform``: ``fn(sample) -> dict``, run on each sample in the workers after it is
      read and decoded; arrays, tensors and numbers it returns are stacked into batch tensors
      (same shape and dtype for every sample), anything else comes as lists (transform.py);
    - ``variable``: ``{field: Pad(...) | Packed() | PackRows(...)}``, variable-length array
      fields as padded tensors plus lengths, values plus offsets, or token rows (variable.py;
      by default they come as lists of arrays);
    - ``worker_type``: ``"process"`` (default) or ``"thread"`` (for work that releases the GIL);
    - ``device``: return batches on this device (copied on a side stream);
    - ``seed``: plan the order from (seed, epoch) instead of torch's samplers (see below);
    - ``rank`` / ``world_size``: this process's DDP place (default: torch.distributed when
      initialised, else the RANK / WORLD_SIZE environment variables);
    - ``block_window``: blocks per shuffle window of ``shuffle="block"``;
    - ``bad_samples``: ``"raise"`` (default), or ``"skip"`` / a :class:`SkipBadSamples` budget:
      records that fail their checksum and images of ``decode=`` fields that fail to decode
      are dropped from their batch and counted (``stats()["skipped_samples"]``, and in
      ``state_dict``) instead of raising (see badsamples.py).

    **Planned order.** With ``seed=``, ``shuffle="global"`` / ``"block"``, ``rank=`` /
    ``world_size=`` or a :class:`fastload.Mix`, the loader plans its own order (seed defaults to
    0): deterministic from (seed, epoch) whatever the worker count or type, split into equal
    batch counts per DDP rank, resumable with another world size or worker count. Its
    ``sampler`` is that plan (a DistributedSampler: this rank's share) and it refuses other
    ``sampler``, ``batch_sampler`` and ``generator`` arguments. Without those arguments the
    order is torch's own (same batches as torch's DataLoader), resumable as torchdata's
    StatefulDataLoader resumes it (torch_order.py).

    **Memory.** Workers read records where they lie in mapped shards and decompressed copies
    (the page cache's pages, shared), and each keeps at most about ``FASTLOAD_MAPPED_BUDGET``
    of them mapped (default 256 MiB; see :class:`fastload.Dataset`), so a worker's memory does
    not grow with the epochs it has read; batches live in shared-memory slabs.
    """

    # fastload's own arguments, attributes as torch's are (set in __init__)
    snapshot_every_n_steps: int | None
    decode: Mapping[str, ImageDecode | TokenDecode] | None
    transform: Callable[[dict], Any] | None
    variable: Mapping[str, VariableSpec] | None
    worker_type: str
    device: torch.device | None
    seed: int | None
    rank: int | None
    world_size: int | None
    block_window: int
    bad_samples: str | SkipBadSamples

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = 1,
        shuffle: bool | str | None = None,
        sampler: Sampler | Iterable | None = None,
        batch_sampler: Sampler | Iterable | None = None,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: Any = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        snapshot_every_n_steps: int | None = 1,
        decode: Mapping[str, ImageDecode | TokenDecode] | None = None,
        transform: Callable[[dict], Any] | None = None,
        variable: Mapping[str, VariableSpec] | None = None,
        worker_type: str = "process",
        device: str | torch.device | None = None,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        block_window: int = 16,
        bad_samples: str | SkipBadSamples = "raise",
    ) -> None:
        own = {name: value for name, value in locals().items() if name in OWN_ARGUMENTS}
        if worker_type not in WORKER_TYPES:
            raise ValueError(f"worker_type must be one of {WORKER_TYPES}, got {worker_type!r}")
        _check_snapshot_every(snapshot_every_n_steps)
        planner = given_plan(sampler, batch_sampler)
        if planner is None and wants_plan(dataset, shuffle, seed, rank, world_size):
            refuse_samplers(sampler=sampler, batch_sampler=batch_sampler, generator=generator)
            planner = Planner(
                dataset,
                batch_size=batch_size,
                drop_last=drop_last,
                shuffle=shuffle,
                seed=seed,
                rank=rank,
                world_size=world_size,
                block_window=block_window,
            )
            # torch cuts the plan's share into batches as it cuts any sampler's order
            sampler, shuffle = PlanSampler(planner), None
        elif planner is not None:
            shuffle = None  # (the plan decides it)
        super().__init__(
            dataset,
            batch_size=batch_size,
            shuffle=None if isinstance(shuffle, str) else shuffle,  # (a str made a plan)
            sampler=sampler,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            drop_last=drop_last,
            timeout=timeout,
            worker_init_fn=worker_init_fn,
            multiprocessing_context=multiprocessing_context,
            generator=generator,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
            in_order=in_order,
        )
        for name, value in own.items():
            setattr(self, name, value)
        self._set_up(planner, sampler, batch_sampler, collate_fn, num_workers)

    def _set_up(
        self,
        planner: Planner | None,
        sampler: Any,
        batch_sampler: Any,
        collate_fn: Callable | None,
        num_workers: int,
    ) -> None:
        """After torch's own set-up: the order (planned, or torch's made resumable), the
        fast path where the dataset and options allow it, and what the iterations share."""
        dataset: Any = self.dataset  # (a fastload dataset, or any torch one)
        self.device = device_of(self.device)
        self._planner = planner
        if planner is None and sampler is None and batch_sampler is None:
            warn_if_unsplit(dataset)
        self._given_collate = self.collate_fn  # the fast path's is torch's default's
        policy = policy_of(self.bad_samples)
        self._budget = BadSampleBudget(policy) if policy is not None else None
        self._stats = LoaderStats()
        self.fast = (
            fast_capable(dataset)
            and (collate_fn is None or collate_fn in (default_collate, default_convert))
            and self._auto_collation
        )
        check_fast_options(self.fast, self.decode, self.transform, self.variable, policy)
        self._order: TorchOrder | None = None
        torch_index = torch.utils.data.DataLoader._index_sampler.fget(self)  # pyright: ignore[reportOptionalCall]
        if planner is not None:
            given = batch_sampler is not None and not isinstance(batch_sampler, PlanBatchSampler)
            index = batch_sampler if given else PlanBatchSampler(planner, as_lists=not self.fast)
        else:
            self._order = TorchOrder(torch_index, iterable=isinstance(dataset, IterableDataset))
            index = self._order.index
        fast = None
        if self.fast:
            fast = FastPath(
                dataset,
                batch_size=planner.batch_size if planner is not None else None,
                batch_sampler=self.batch_sampler,
                planned=planner is not None and isinstance(index, PlanBatchSampler),
                decode=self.decode,
                transform=self.transform,
                variable=self.variable,
                settings=self._settings(),
                device=self.device,
                budget=self._budget,
                stats=self._stats,
            )
        self._loading = Loading(
            dataset=dataset,
            iterable=isinstance(dataset, IterableDataset),
            auto_collation=self._auto_collation,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            planner=planner,
            order=self._order,
            index_sampler=index,
            fast=fast,
            stats=self._stats,
            device=self.device,
            snapshot_every=self.snapshot_every_n_steps or 0,
        )
        self._live: LoaderIterator | None = None  # persistent workers' iterator
        self._iterators: weakref.WeakSet = weakref.WeakSet()
        processes = num_workers if fast is not None and fast.split is SHARED_BLOCKS else 1
        warn_about_block_cache(dataset, planner, self.sampler, processes)

    # -- torch's DataLoader surface -------------------------------------------------------
    @property
    def _index_sampler(self) -> Any:
        # What the iterators draw batches of indices from: the plan's batches, or torch's
        # samplers through torch_order.IndexOrder (which saves and replays their order).
        return self._loading.index_sampler

    def __len__(self) -> int:
        return self._loading.length()

    def __iter__(self) -> LoaderIterator:  # pyright: ignore[reportIncompatibleMethodOverride]
        settings = self._settings()
        loading = self._loading
        if loading.fast is not None and self.collate_fn is not self._given_collate:
            # collate_fn set anew since: torch's iterators run it (the general path)
            index = loading.index_sampler
            if isinstance(index, PlanBatchSampler):
                index = PlanBatchSampler(index.planner, as_lists=True)
            loading = dataclasses.replace(loading, fast=None, index_sampler=index)
        if self.persistent_workers and self.num_workers > 0:
            live = self._live
            if live is None or live.broken or live.loading is not loading:
                live = self._live = LoaderIterator(loading, settings)
            else:
                live.restart(settings)
        else:
            live = LoaderIterator(loading, settings)
        self._iterators.add(live)
        return live

    def _settings(self) -> Settings:
        """The settings an iteration starting now runs with (torch reads them then)."""
        return Settings(
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor,
            timeout=self.timeout,
            in_order=self.in_order,
            persistent_workers=self.persistent_workers,
            worker_init_fn=self.worker_init_fn,
            multiprocessing_context=self.multiprocessing_context,
            generator=self.generator,
            pin_memory=self.pin_memory,
            worker_type=self.worker_type,
            collate_fn=self.collate_fn,
            pin_memory_device=self.pin_memory_device,
            len_called=self._IterableDataset_len_called,
        )

    def stats(self) -> dict:
        """Throughput (samples/s, MB/s), the fraction of wall time the consumer waited for
        data (``data_stall``), and seconds per stage, since the first batch was asked for.
        With a planned order, also ``plan``: epoch, rank, world size, padded and dropped
        samples of the current epoch."""
        out = self._stats.as_dict()
        if self._planner is not None:
            out["plan"] = self._planner.info()
        return out

    # -- epochs and resumption ----------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next iteration (its order; a loaded state of another epoch is
        dropped). Without a planned order, passed on to a sampler that has ``set_epoch``
        (e.g. DistributedSampler), as users of torch expect."""
        if self._planner is not None:
            self._planner.set_epoch(epoch)
            return
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            set_epoch = getattr(sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
                return

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: JSON-safe (where a sampler's or dataset's own state is),
        counting the batches handed to the training loop, never prefetched ones.

        Planned order: the global position in the epoch's plan (the same on every rank in
        lockstep), the seed, the order and the dataset's fingerprint; with
        ``in_order=False`` (fast path) a rank that had batches past that position lists
        them (``ahead``): its state is its own, to load on that rank with the same world
        and batch size. torch's order: see torch_order.py."""
        if self._planner is not None:
            if not self.in_order and not self.fast and self.num_workers > 0:
                raise ValueError(_UNORDERED)
            state = self._planner.state_dict()
            if self._budget is not None:
                state["bad_samples"] = self._budget.state(self._planner.topology()[0])
            return state
        return self._torch_state()

    def _torch_state(self) -> dict[str, Any]:
        order = self._torch_order()
        if not self.in_order and not self.fast and self.num_workers > 0:
            raise ValueError(_UNORDERED)
        if order.pending is not None:
            return order.state_dict(self.generator)
        live = self._live is not None and not self._live.broken
        state = order.state_dict(self.generator, seed_draw=not (self.persistent_workers and live))
        state["num_workers"] = self.num_workers
        record, dataset = order.current, self.dataset
        iterable = isinstance(dataset, IterableDataset)
        running = record is not None and not record.finished and (record.started or iterable)
        if iterable and running and record is not None:
            state["iterable"] = worker_part(record, self.num_workers, iterable=True)
        if stateful_dataset(dataset):
            part: dict[str, Any] = {"num_workers": self.num_workers}
            carried = self._live.worker_states() if live and self._live is not None else {}
            if running and record is not None and self.num_workers > 0 and not iterable:
                part.update(worker_part(record, self.num_workers, iterable=False))
            elif carried and self.num_workers > 0:  # persistent workers go on from theirs
                part["workers"] = carried
            else:
                part["main"] = dataset.state_dict()  # pyright: ignore[reportAttributeAccessIssue]
            state["dataset"] = part
        if self._budget is not None:
            state["bad_samples"] = self._budget.state(0)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` at the next iteration: nothing repeated, nothing skipped.
        A planned order resumes with any world size, worker count or worker type; torch's
        order with any worker count, but a per-worker state (an IterableDataset's, a
        dataset's own) only with the worker count that saved it. PlanStateError when the
        state was saved for another dataset, order or settings, or is corrupted (naming
        the field)."""
        saved_order = state.get("order") if isinstance(state, Mapping) else None
        if isinstance(state, Mapping):
            check_counts(state.get("bad_samples"))  # (before anything is loaded)
        if self._planner is not None:
            if saved_order is not None:
                raise PlanStateError(
                    f"this state was saved by a loader in torch's order (no seed=), this "
                    f"loader plans its own (seed={self._planner.seed}): build the loader as "
                    "the run that saved it was built"
                )
            self._planner.load_state_dict(state)
            if self._budget is not None:
                self._budget.restore_state(state, *self._planner.topology())
                self._stats.skipped = self._budget.skipped
            return
        if isinstance(state, Mapping) and saved_order is None and "seed" in state:
            raise PlanStateError(
                "this state was saved by a loader with a planned order (seed=, shuffle="
                "'global'/'block', rank=, world_size= or a Mix); this loader follows "
                "torch's order: build the loader as the run that saved it was built"
            )
        order = self._torch_order()
        checked = validate_torch_state(state)
        if checked.get("iterable") is not None:
            check_workers(checked["iterable"], self.num_workers, "iterable")
        dataset_part = checked.get("dataset")
        if dataset_part is not None:
            if not stateful_dataset(self.dataset):
                raise PlanStateError(
                    "loader state mismatch: it holds the state of a dataset with a state of "
                    "its own (state_dict/load_state_dict); this loader's dataset has none"
                )
            if "workers" in dataset_part:
                check_workers(dataset_part, self.num_workers, "dataset")
        order.load_state_dict(checked)
        if self._budget is not None:
            self._budget.restore_state(checked, 0, 1)
            self._stats.skipped = self._budget.skipped

    @property
    def padding(self) -> int:
        """Samples repeated (over all ranks) to give every rank equal batches this epoch."""
        return self._planner.info()["padding"] if self._planner is not None else 0

    @property
    def dropped(self) -> int:
        """Samples no rank serves this epoch (``drop_last`` with a tail)."""
        return self._planner.info()["dropped"] if self._planner is not None else 0

    def close(self) -> None:
        """Stop the workers now (persistent ones, and those of iterations left unfinished)."""
        for it in list(self._iterators):
            it.close()
        self._live = None
        if self._loading.fast is not None:
            self._loading.fast.close()

    # -- Accelerate: a planned loader is split among the processes already ----------------
    @property
    def _is_accelerate_prepared(self) -> bool:
        # Accelerate's prepare() rebuilds any other DataLoader around a sampler that gives
        # each process its share: a planned loader's batches are this rank's share already,
        # and rebuilt it would be split a second time (and lose the fast path).
        return self._planner is not None or self.__dict__.get("_accelerate_flag", False)

    @_is_accelerate_prepared.setter
    def _is_accelerate_prepared(self, value: bool) -> None:
        self.__dict__["_accelerate_flag"] = bool(value)

    @property
    def layout(self) -> Any:
        """The fast path's batch layout (layout.BatchLayout): where each field of a batch
        lives in a slab; None on the general path."""
        return self._loading.fast.layout if self._loading.fast is not None else None

    # -- internals some tests look at ---------------------------------------------------------
    def _torch_order(self) -> TorchOrder:
        if self._order is None:  # (a planned loader's state is its plan's)
            raise RuntimeError("this loader follows a planned order, not torch's")
        return self._order

    def _fast_path(self) -> FastPath:
        if self._loading.fast is None:
            raise AttributeError("this loader runs on the general path")
        return self._loading.fast

    @property
    def _slabs(self) -> Any:
        return self._fast_path().slabs

    @property
    def _split(self) -> Any:
        return self._fast_path().split

    @property
    def _by_block(self) -> bool:
        return self._loading.fast is not None and self._loading.fast.by_block

    def _shares(self, n: int) -> int:
        return self._fast_path().shares(n, self.num_workers)

    @property
    def _per_message(self) -> int:
        return self._fast_path().per_message

    @property
    def _dali(self) -> Any:
        return self._fast_path().dali

    @property
    def _pool(self) -> Any:
        """The worker pool of the live (or latest) iteration on the fast path."""
        for it in [self._live, *self._iterators]:
            if it is not None and it.pool is not None:
                return it.pool
        return None


_UNORDERED = (
    "state_dict() with in_order=False needs the fast path (a fastload.Dataset, no "
    "collate_fn): torch's loader, which runs the others, does not say which batch it "
    "handed out"
)


def _check_snapshot_every(n: Any) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"snapshot_every_n_steps must be an int >= 1 or None, got {n!r}")
