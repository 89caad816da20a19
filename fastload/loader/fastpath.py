"""The DataLoader's fast path: a fastload dataset read into shared-memory slabs.

:class:`FastPath` holds what lasts as long as the loader (the batch layout, the slab pool,
the delivery of batches, the DALI stage) and runs one epoch at a time
(:meth:`FastPath.epoch`): the epoch's batches of indices go to the workers (feed.py) or are
filled here, and come out as ``(j, batch)`` for the iteration's j-th batch, or
``(j, Failed(error))`` for one that raised (the iteration goes on). The workers belong to
the iterator that started them (:class:`Workers`): a persistent iterator keeps them from
epoch to epoch, any other stops them when its epoch ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import LoaderTimeoutError, WorkerDiedError
from ..read.contract import Readable
from .ahead import Ahead, extra_slabs
from .badsamples import BadSampleBudget
from .delivery import Delivery
from .device import CopiesInFlight, pinning_wanted, register_slabs
from .exits import close_at_exit
from .feed import MessageSizer, WorkerFeed, drain, filled_here
from .fill import probe_transform
from .finishing import Finishing
from .layout import BatchLayout, ImageDecode, TokenDecode
from .messages import Failed
from .options import encoded_room
from .pool import WorkerPool
from .sampling import checked, declared_batch_size
from .slabs import SlabPool
from .splits import SHARED_BLOCKS, Split, choose_split
from .stats import LoaderStats
from .variable import Pad, VariableSpec, check_variable
from .worker import WorkerSetup

__all__ = ["FastPath", "Workers", "Settings"]


@dataclass(frozen=True)
class Settings:
    """The loader's settings an iteration runs with, read from its attributes when the
    iteration starts (torch reads them then too: they may be changed between iterations)."""

    num_workers: int
    prefetch_factor: int | None
    timeout: float
    in_order: bool
    persistent_workers: bool
    worker_init_fn: Callable[[int], None] | None
    multiprocessing_context: Any
    generator: torch.Generator | None
    pin_memory: bool
    worker_type: str
    collate_fn: Callable[[Any], Any] | None = None
    pin_memory_device: str = ""
    len_called: int | None = None  # len(loader) of an IterableDataset, for torch's warning


class FastPath:
    """A fastload dataset's batches through slabs (see the module doc)."""

    def __init__(
        self,
        dataset: Readable,
        *,
        batch_size: int | None,
        batch_sampler: Any,
        planned: bool,
        decode: Mapping[str, ImageDecode | TokenDecode] | None,
        transform: Callable[[dict], Any] | None,
        variable: Mapping[str, VariableSpec] | None,
        settings: Settings,
        device: torch.device | None,
        budget: BadSampleBudget | None,
        stats: LoaderStats,
    ) -> None:
        self.dataset = dataset
        self.device, self.budget, self.stats = device, budget, stats
        if settings.num_workers > 0 and not settings.prefetch_factor:
            # torch accepts it here and fails on iteration; here it would wait forever
            raise ValueError("prefetch_factor must be at least 1 with num_workers > 0")
        # A batch_sampler that declares no batch_size is sized from each epoch's own pass over
        # it (iterating it here would draw from its random state: not torch's order then).
        size = batch_size if planned else declared_batch_size(batch_sampler)
        self.sized_per_epoch = size is None
        self.decode = decode
        self.transform = transform
        schema = dataset.schema
        if schema is None:  # (fast_capable() refuses such datasets first)
            raise ValueError("the fast path reads datasets of one schema")
        self.schema = schema
        self.variable = check_variable(schema, variable)
        # made by the consumer from the lists the workers send (all but a fixed-length Pad)
        self.collated = {
            name: spec
            for name, spec in self.variable.items()
            if not (isinstance(spec, Pad) and spec.length is not None)
        }
        self.outputs = probe_transform(dataset, decode, transform) if transform else ()
        self.pinned = pinning_wanted(settings.pin_memory, device)
        self.copies = CopiesInFlight() if device is not None else None
        self.dali: Any = None  # decodestage.DecodeStage, made at the first iteration
        self.made_for: tuple = ()
        self.make_buffers(size or 1, settings)

    # -- buffers ----------------------------------------------------------------------------
    def make_buffers(self, size: int, settings: Settings) -> None:
        """The batch layout, the way workers split the work, and the slab pool for batches
        of up to ``size`` samples, for ``settings``' workers."""
        self.layout = BatchLayout(
            self.schema,
            size,
            self.decode,
            self.transform,
            self.outputs,
            self.variable,
            encoded_bytes=encoded_room(self.dataset, self.decode),
            gpu=self.device is not None and self.device.type == "cuda",
        )
        self.per_message = MessageSizer.most(self.layout.slab_size)
        workers = settings.num_workers
        self.split: Split = choose_split(
            self.dataset,
            self.layout,
            workers=workers,
            worker_type=settings.worker_type,
            persistent=settings.persistent_workers,
            batch_size=size,
        )
        slabs = self.split.slab_count(workers, settings.prefetch_factor or 0, self.per_message)
        slabs += extra_slabs(self.reads_ahead(settings))
        self.slabs = SlabPool(
            self.layout.slab_size,
            slabs,
            shared=workers > 0 and settings.worker_type == "process",
        )
        self.slabs.headroom = 8 + 2 * workers
        if self.pinned:
            register_slabs(self.slabs)
        self.delivery = Delivery(
            self.layout,
            self.slabs,
            self.stats,
            budget=self.budget,
            schema=self.schema,
            collated=self.collated,
            device=self.device,
            copies=self.copies,
            finishing=Finishing(self.layout, on_new_pool=register_slabs if self.pinned else None),
        )
        self.made_for = self._key(settings)

    def reads_ahead(self, settings: Settings) -> bool:
        """Whether a thread of the training process receives the batches from the workers
        ahead of the consumer (ahead.py): for small batches (several to a message: the
        consumer's ~30 us a batch is a share of a short step), on the CPU (a CUDA device's
        copies are ordered on the consumer's stream) and without a decode stage (DALI's
        pipelines are fed from the thread that made them)."""
        return (
            settings.num_workers > 0
            and self.per_message > 1
            and not self.layout.staged
            and (self.device is None or self.device.type == "cpu")
        )

    @staticmethod
    def _key(settings: Settings) -> tuple:
        return (settings.num_workers, settings.prefetch_factor, settings.worker_type)

    def fit(self, settings: Settings, workers: Workers) -> None:
        """New buffers where the worker settings changed since they were made (the
        loader's attributes were set anew: torch reads them at each iteration too)."""
        if self._key(settings) != self.made_for:
            workers.close()
            self.make_buffers(self.layout.batch_size, settings)

    # -- an epoch ---------------------------------------------------------------------------
    def epoch(
        self,
        index_batches: Iterator[Any],
        settings: Settings,
        workers: Workers,
        base_seed: int,
        rng_seed: Callable[[int], tuple],
    ) -> Iterator[tuple[int, Any]]:
        """The epoch's batches (module doc): ``index_batches`` are its batches of dataset
        indices, ``rng_seed(j)`` seeds the augmentations of its j-th. The workers start
        here, in the consumer's thread, before any thread reads the batches."""
        plan = self._plan(index_batches, workers)
        pool = workers.ready(self, settings, base_seed) if settings.num_workers else None
        batches = self._fast_batches(plan, settings, workers, pool, rng_seed)
        if pool is not None and self.reads_ahead(settings):
            return Ahead(batches, pool.interrupt, pool.clear_interrupt)
        if not self.layout.staged:
            return batches
        if self.dali is None:
            from .decodestage import DecodeStage

            self.dali = DecodeStage(
                self.layout.staged, self.layout.batch_size, self.device, self.budget, self.stats
            )
        return self._finished(self.dali.run(batches))

    def _finished(self, decoded: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        for number, batch in decoded:
            if isinstance(batch, Failed):
                yield number, batch
                continue
            try:
                yield number, self.delivery.finish(batch)
            except Exception as e:
                yield number, Failed(e)

    def _fast_batches(
        self,
        plan: Iterator[np.ndarray],
        settings: Settings,
        workers: Workers,
        pool: WorkerPool | None,
        rng_seed: Callable[[int], tuple],
    ) -> Iterator[tuple[int, Any]]:
        if pool is None:
            skip_bad, deliver = self.budget is not None, self.delivery.deliver
            yield from filled_here(
                self.dataset, self.layout, self.slabs, plan, rng_seed, skip_bad, deliver
            )
            return
        feed = WorkerFeed(
            pool,
            self.slabs,
            self.split,
            prefetch_factor=settings.prefetch_factor or 1,
            per_message=self.per_message,
            in_order=settings.in_order,
            timeout=settings.timeout,
            rng_seed=rng_seed,
        )
        try:
            yield from feed.batches(plan, self.delivery.deliver)
        finally:
            if not settings.persistent_workers or pool.broken:
                workers.close()

    def _plan(self, index_batches: Iterator[Any], workers: Workers) -> Iterator[np.ndarray]:
        """The epoch's batches of dataset indices, each no larger than a slab holds. A
        batch_sampler without a batch_size is listed whole first (the epoch's one pass over
        it, as torch makes), and the buffers grow to its largest batch."""
        if not self.sized_per_epoch:
            return checked(index_batches, self.layout.batch_size)
        batches = [np.asarray(batch, dtype=np.int64) for batch in index_batches]
        largest = max((len(b) for b in batches), default=1)
        if largest > self.layout.batch_size:
            # New buffers; workers of the old ones stop (persistent ones restart). Tensors
            # of batches handed out keep their slabs.
            workers.close()
            self.make_buffers(largest, workers.settings)
        return iter(batches)

    @property
    def by_block(self) -> bool:
        """Whether worker processes share each batch out by storage block (splits.py)."""
        return self.split is SHARED_BLOCKS

    def shares(self, n: int, num_workers: int) -> int:
        """Workers that share a batch of ``n`` records (splits.py)."""
        return self.split.shares(n, num_workers)

    def close(self) -> None:
        if self.dali is not None:
            self.dali.close()
        if self.copies is not None:
            self.copies.wait()


class Workers:
    """The worker pool of one iterator (persistent workers: across its epochs)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: WorkerPool | None = None
        self.fast: FastPath | None = None

    def ready(self, fast: FastPath, settings: Settings, base_seed: int) -> WorkerPool:
        """This epoch's pool: the persistent one, emptied of what an earlier epoch left in
        flight, or a new one."""
        self.settings = settings
        pool = self.pool
        if pool is not None and settings.persistent_workers and not pool.broken:
            try:
                drain(pool, fast.slabs, settings.timeout)
                return pool
            except (WorkerDiedError, LoaderTimeoutError):
                self.close()
        elif pool is not None:
            self.close()
        setup = WorkerSetup(
            fast.dataset,
            fast.layout,
            settings.worker_init_fn,
            settings.num_workers,
            base_seed,
            skip_bad=fast.budget is not None,
        )
        self.pool = WorkerPool(
            setup,
            fast.slabs,
            worker_type=settings.worker_type,
            context=settings.multiprocessing_context,
        )
        self.fast = fast
        close_at_exit(self)
        return self.pool

    def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        if pool.shutdown():
            # Every worker has stopped: the slabs it still had (a break, an error) are free.
            for slab in pool.forget_out():
                if self.fast is not None:
                    self.fast.slabs.release(slab)
