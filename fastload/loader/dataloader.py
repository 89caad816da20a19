"""``fastload.DataLoader``: torch's DataLoader arguments, fastload's speed.

With a :class:`fastload.Dataset` (and no custom ``collate_fn``) batches come from the fast
path: workers gather fixed-size fields straight into shared-memory slabs with the compiled
core and decode images in place; the consumer receives tensors that *are* the slab (no copy,
no pickling of sample bytes). Any other dataset, or a custom ``collate_fn``, runs on torch's own
DataLoader with the same arguments, so it yields exactly what torch would.

Batches of the fast path are dicts: fixed-size fields and decoded images as tensors of shape
``(n, ...)``, other fields as lists. See :mod:`fastload.loader.slabs` for the lifetime rule.
The fast path's parts: the split of work among workers (splits.py), the consumer's side of
the workers (feed.py), a filled slab handed out as a batch (delivery.py).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import LoaderTimeoutError, WorkerDiedError
from .advice import warn_about_block_cache, warn_if_unsplit
from .badsamples import BadSampleBudget, SkipBadSamples, policy_of
from .delivery import Delivery
from .device import CopiesInFlight, move, pinning_wanted, register_slabs
from .feed import MessageSizer, WorkerFeed, drain, filled_here
from .fill import probe_transform
from .finishing import Finishing
from .layout import BatchLayout, ImageDecode, TokenDecode
from .options import WORKER_TYPES, check_fast_options, device_of, encoded_room, fast_capable
from .planned_order import PlanBatchSampler, Planner, refuse_samplers, wants_plan
from .pool import WorkerPool
from .sampling import batch_len, checked, declared_batch_size, eager_batches
from .slabs import SlabPool
from .splits import SHARED_BLOCKS, choose_split
from .stats import LoaderStats
from .variable import Pad, VariableSpec, check_variable
from .worker import WorkerSetup

__all__ = ["DataLoader"]


class DataLoader:
    """A drop-in replacement for ``torch.utils.data.DataLoader``.

    Arguments up to ``in_order`` have torch's meaning. fastload adds, keyword-only:

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
    batch counts per DDP rank, with ``set_epoch``, ``state_dict`` and ``load_state_dict``
    (exact resumption, also with another world size or worker count). It then refuses
    ``sampler``, ``batch_sampler`` and ``generator``. Without those arguments the order is
    torch's own (same batches as torch's DataLoader) and ``state_dict`` raises.
    """

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
        if worker_type not in WORKER_TYPES:
            raise ValueError(f"worker_type must be one of {WORKER_TYPES}, got {worker_type!r}")
        self._planner: Planner | None = None
        if wants_plan(dataset, shuffle, seed, rank, world_size):
            refuse_samplers(sampler=sampler, batch_sampler=batch_sampler, generator=generator)
            self._planner = Planner(
                dataset,
                batch_size=batch_size,
                drop_last=drop_last,
                shuffle=shuffle,
                seed=seed,
                rank=rank,
                world_size=world_size,
                block_window=block_window,
            )
            # torch's DataLoader still checks the other arguments and, off the fast path,
            # loads the planned batches.
            batch_sampler = PlanBatchSampler(
                self._planner, as_lists=not (fast_capable(dataset) and collate_fn is None)
            )
            shuffle = None
            user_batch_size, batch_size, user_drop_last, drop_last = batch_size, 1, drop_last, False
        # torch's own DataLoader checks the arguments (its errors, in its order) and builds the
        # samplers; off the fast path it also does the loading.
        self._torch = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
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
        if self._planner is None and sampler is None and batch_sampler is None:
            warn_if_unsplit(dataset)
        self.dataset = dataset
        self.batch_size = self._torch.batch_size
        self.drop_last = self._torch.drop_last
        if self._planner is not None:
            self.batch_size, self.drop_last = user_batch_size, user_drop_last
            batch_size = user_batch_size
        self.num_workers = num_workers
        self.prefetch_factor = self._torch.prefetch_factor
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = self._torch.multiprocessing_context  # a context object
        self.generator = generator
        self.persistent_workers = persistent_workers
        self.in_order = in_order
        self.worker_type = worker_type
        self.device = device_of(device)
        self._stats = LoaderStats()
        policy = policy_of(bad_samples)
        self._budget = BadSampleBudget(policy) if policy is not None else None
        self._pool: WorkerPool | None = None
        self._copies: Any = None  # device.CopiesInFlight: host batches being copied to a GPU
        self._persistent_seed: int | None = None  # persistent workers' base seed
        self._delivery: Delivery | None = None
        self.fast = fast_capable(dataset) and collate_fn is None and batch_size is not None
        check_fast_options(self.fast, decode, transform, variable, policy)
        self.batch_sampler = self._torch.batch_sampler
        self.sampler = self._torch.sampler
        if self.fast:
            self._set_up_fast_path(batch_size, decode, transform, variable, pin_memory)
        processes = num_workers if self.fast and self._split is SHARED_BLOCKS else 1
        warn_about_block_cache(self.dataset, self._planner, self.sampler, processes)

    def _set_up_fast_path(
        self,
        batch_size: int,
        decode: Mapping[str, ImageDecode | TokenDecode] | None,
        transform: Callable[[dict], Any] | None,
        variable: Mapping[str, VariableSpec] | None,
        pin_memory: bool,
    ) -> None:
        if self.num_workers > 0 and not self.prefetch_factor:
            # torch accepts it here and fails on iteration; here it would wait forever
            raise ValueError("prefetch_factor must be at least 1 with num_workers > 0")
        # A batch_sampler that declares no batch_size is sized from each epoch's own pass over
        # it (iterating it here would draw from its random state: not torch's order then).
        size = batch_size if self._planner is not None else declared_batch_size(self.batch_sampler)
        self._sized_per_epoch = size is None
        self._decode = decode
        self._transform = transform
        self._variable = check_variable(self.dataset.schema, variable)
        # made by the consumer from the lists the workers send (all but a fixed-length Pad)
        self._collated = {
            name: spec
            for name, spec in self._variable.items()
            if not (isinstance(spec, Pad) and spec.length is not None)
        }
        self._outputs = probe_transform(self.dataset, decode, transform) if transform else ()
        self._pinned = pinning_wanted(pin_memory, self.device)
        if self.device is not None:
            self._copies = CopiesInFlight()
        self._make_buffers(size or 1)
        self._dali: Any = None  # decodestage.DecodeStage, made at the first iteration

    def _make_buffers(self, size: int) -> None:
        """The batch layout, the way workers split the work, and the slab pool for batches
        of up to ``size`` samples."""
        self.layout = BatchLayout(
            self.dataset.schema,
            size,
            self._decode,
            self._transform,
            self._outputs,
            self._variable,
            encoded_bytes=encoded_room(self.dataset, self._decode),
            gpu=self.device is not None and self.device.type == "cuda",
        )
        self._per_message = MessageSizer.most(self.layout.slab_size)
        workers = self.num_workers
        self._split = choose_split(
            self.dataset,
            self.layout,
            workers=workers,
            worker_type=self.worker_type,
            persistent=self.persistent_workers,
            batch_size=size,
        )
        slabs = self._split.slab_count(workers, self.prefetch_factor, self._per_message)
        self._slabs = SlabPool(
            self.layout.slab_size, slabs, shared=workers > 0 and self.worker_type == "process"
        )
        self._slabs.headroom = 8 + 2 * workers
        if self._pinned:
            register_slabs(self._slabs)
        self._delivery = Delivery(
            self.layout,
            self._slabs,
            self._stats,
            budget=self._budget,
            schema=self.dataset.schema,
            collated=self._collated,
            device=self.device,
            copies=self._copies,
            finishing=Finishing(self.layout, on_new_pool=register_slabs if self._pinned else None),
        )

    @property
    def _by_block(self) -> bool:
        """Whether worker processes share each batch out by storage block (splits.py)."""
        return getattr(self, "_split", None) is SHARED_BLOCKS

    def _shares(self, n: int) -> int:
        """Workers that share a batch of ``n`` records (splits.py)."""
        return self._split.shares(n, self.num_workers)

    # -- torch's DataLoader surface -------------------------------------------------------
    def __len__(self) -> int:
        return len(self._torch) if not self.fast else len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        if self._planner is not None:
            cursor = self._planner.begin()
            batches = (
                iter(self._torch)
                if not self.fast
                else self._staged(self._fast_batches(cursor.aug_seed))
            )
            # in_order=False: which batch came is the one delivery handed out last
            number = (lambda: self._delivery.handed) if self.fast and not self.in_order else None
            return self._timed(self._planner.track(cursor, batches, number))
        if not self.fast:
            return self._timed(iter(self._torch))
        # As in torch, the workers' base seed is drawn from the generator when the iterator is
        # made, but only once for persistent workers (torch draws it when they start).
        if self.persistent_workers and self._persistent_seed is not None:
            base_seed = self._persistent_seed
        else:
            base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
            if self.persistent_workers:
                self._persistent_seed = base_seed
        return self._timed(self._staged(self._fast_batches(base_seed)))

    def stats(self) -> dict:
        """Throughput (samples/s, MB/s), the fraction of wall time the consumer waited for
        data (``data_stall``), and seconds per stage, since the first batch was asked for.
        With a planned order, also ``plan``: epoch, rank, world size, padded and dropped
        samples of the current epoch."""
        out = self._stats.as_dict()
        if self._planner is not None:
            out["plan"] = self._planner.info()
        return out

    # -- the planned order (seed, DDP, resumption; see planned_order.py) ---------------------
    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next iteration (its order; a loaded state of another epoch is
        dropped). Without a planned order, passed on to a sampler that has ``set_epoch``
        (e.g. DistributedSampler), as users of torch expect."""
        if self._planner is not None:
            self._planner.set_epoch(epoch)
            return
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
                return

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands: the global position in its plan (batches handed out on
        every rank; prefetched ones do not count), the seed, the order and the dataset's
        fingerprint. Plain ints and strings (JSON-safe); the same on every rank in lockstep.
        With ``in_order=False`` (fast path), a rank that had batches past that position
        lists them (``ahead``): its state is its own, to load on that rank with the same
        world and batch size."""
        planner = self._need_plan("state_dict")
        if not self.in_order and not self.fast and self.num_workers > 0:
            raise ValueError(
                "state_dict() with in_order=False needs the fast path (a "
                "fastload.Dataset, no collate_fn): torch's loader, which runs "
                "the others, does not say which batch it handed out"
            )
        state = planner.state_dict()
        if self._budget is not None:
            state["bad_samples"] = self._budget.state(planner.topology()[0])
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` at the next iteration: nothing repeated, nothing skipped,
        whatever the world size, worker count or worker type now. PlanStateError when it was
        saved for another dataset or with another seed / shuffle."""
        planner = self._need_plan("load_state_dict")
        planner.load_state_dict(state)
        if self._budget is not None:
            self._budget.restore_state(state, *planner.topology())
            self._stats.skipped = self._budget.skipped

    @property
    def padding(self) -> int:
        """Samples repeated (over all ranks) to give every rank equal batches this epoch."""
        return self._planner.info()["padding"] if self._planner is not None else 0

    @property
    def dropped(self) -> int:
        """Samples no rank serves this epoch (``drop_last`` with a tail)."""
        return self._planner.info()["dropped"] if self._planner is not None else 0

    def _need_plan(self, what: str) -> Planner:
        if self._planner is None:
            raise ValueError(
                f"{what}() needs the loader's planned order: pass seed= (and no "
                "sampler, batch_sampler or generator). Torch's samplers draw from "
                "a generator whose position cannot be saved exactly."
            )
        return self._planner

    def close(self) -> None:
        """Stop the workers now (also done at the end of each epoch unless persistent)."""
        if self._pool is not None:
            self._close_pool(self._pool)
        self._persistent_seed = None
        if getattr(self, "_dali", None) is not None:
            self._dali.close()
        if self._copies is not None:
            self._copies.wait()

    def _close_pool(self, pool: WorkerPool) -> None:
        if pool.shutdown():
            # Every worker has stopped: the slabs it still had (a break, an error) are free.
            for slab in pool.forget_out():
                self._slabs.release(slab)
        if self._pool is pool:
            self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- iteration ------------------------------------------------------------------------
    def _timed(self, batches: Iterator[Any]) -> Iterator[Any]:
        """Counts the time the consumer spends waiting inside next()."""
        stats = self._stats
        stats.start()
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            stats.wait_seconds += time.perf_counter() - start
            if not self.fast:
                # without automatic batching (batch_size=None) each item is one sample
                stats.add_batch(batch_len(batch) if self.batch_sampler is not None else 1, 0, {})
                if self.device is not None:
                    batch = self._to_device(batch)
            yield batch

    def _staged(self, batches: Iterator[Any]) -> Iterator[dict]:
        """``batches`` through the consumer's decode stage, where image fields are DALI's or
        nvImageCodec's (delivery then leaves each batch unfinished: see
        :meth:`Delivery.finish`)."""
        if not self.layout.staged:
            return batches
        if self._dali is None:
            from .decodestage import DecodeStage

            self._dali = DecodeStage(
                self.layout.staged, self.layout.batch_size, self.device, self._budget, self._stats
            )
        return self._finished(self._dali.run(batches))

    def _finished(self, decoded: Iterator[tuple[int, dict]]) -> Iterator[dict]:
        for number, batch in decoded:
            delivery = self._delivery  # (new buffers come with a new one)
            delivery.handed = number  # the stage ran a batch ahead: this is the one handed out
            yield delivery.finish(batch)

    def _fast_batches(self, base_seed: int) -> Iterator[dict]:
        plan, rng_seed = self._plan(), functools.partial(self._rng_seed, base_seed)
        if self.num_workers == 0:
            skip_bad, deliver = self._budget is not None, self._delivery.deliver
            yield from filled_here(
                self.dataset, self.layout, self._slabs, plan, rng_seed, skip_bad, deliver
            )
            return
        if not self.persistent_workers:
            pool = self._start_pool(base_seed)  # each iterator has its own workers, as in torch
        else:
            pool = self._pool or self._start_pool(base_seed)
            try:
                drain(pool, self._slabs, self.timeout)
            except (WorkerDiedError, LoaderTimeoutError):
                self._close_pool(pool)
                pool = self._start_pool(base_seed)
        feed = WorkerFeed(
            pool,
            self._slabs,
            self._split,
            prefetch_factor=self.prefetch_factor,
            per_message=self._per_message,
            in_order=self.in_order,
            timeout=self.timeout,
            rng_seed=rng_seed,
        )
        try:
            yield from feed.batches(plan, self._delivery.deliver)
        finally:
            if not self.persistent_workers or pool.broken:
                self._close_pool(pool)

    def _plan(self) -> Iterator[np.ndarray]:
        """The epoch's batches of dataset indices, each no larger than a slab holds. A
        batch_sampler without a batch_size is listed whole first (the epoch's one pass over
        it, as torch makes), and the buffers grow to its largest batch."""
        if not self._sized_per_epoch:
            return checked(eager_batches(self.batch_sampler), self.layout.batch_size)
        batches = [np.asarray(batch, dtype=np.int64) for batch in self.batch_sampler]
        largest = max((len(b) for b in batches), default=1)
        if largest > self.layout.batch_size:
            self._grow_buffers(largest)
        return iter(batches)

    def _grow_buffers(self, size: int) -> None:
        """New buffers for batches of ``size``; workers of the old ones stop (persistent ones
        restart at the next epoch's start). Tensors of batches handed out keep their slabs."""
        if self._pool is not None:
            self._close_pool(self._pool)
        self._make_buffers(size)

    def _start_pool(self, base_seed: int) -> WorkerPool:
        setup = WorkerSetup(
            self.dataset,
            self.layout,
            self.worker_init_fn,
            self.num_workers,
            base_seed,
            skip_bad=self._budget is not None,
        )
        self._pool = WorkerPool(
            setup, self._slabs, worker_type=self.worker_type, context=self.multiprocessing_context
        )
        return self._pool

    def _rng_seed(self, base_seed: int, j: int) -> tuple:
        """Augmentation seed of the iteration's j-th batch (planned: by its epoch position)."""
        if self._planner is not None and self._planner.current is not None:
            return self._planner.current.rng_seed(j)
        return (base_seed, j)

    def _to_device(self, batch: Any) -> Any:
        """A batch of torch's path (any structure) moved to the loader's device."""
        start = time.perf_counter()
        out = move(batch, self.device)
        self._stats.stage_seconds["transfer"] += time.perf_counter() - start
        return out
