"""``fastload.DataLoader``: torch's DataLoader arguments, fastload's speed.

With a :class:`fastload.Dataset` (and no custom ``collate_fn``) batches come from the fast
path: workers gather fixed-size fields straight into shared-memory slabs with the compiled
core and decode images in place; the consumer receives tensors that *are* the slab (no copy,
no pickling of sample bytes). Any other dataset, or a custom ``collate_fn``, runs on torch's own
DataLoader with the same arguments, so it yields exactly what torch would.

Batches of the fast path are dicts: fixed-size fields and decoded images as tensors of shape
``(n, ...)``, other fields as lists. See :mod:`fastload.loader.slabs` for the lifetime rule.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler, Sampler, SequentialSampler

from ..plan.topology import current_topology
from ..read.contract import Storage
from ..read.dataset import Dataset
from ..read.mix import Mix
from ..utils import format_size
from .badsamples import BadSampleBudget, SkipBadSamples, policy_of
from .layout import BatchLayout, ImageDecode
from .planning import PlanBatchSampler, Planner, wants_plan
from .pool import LoaderTimeoutError, WorkerDiedError, WorkerPool
from .slabs import SlabPool
from .stats import LoaderStats
from .variable import Pad, VariableSpec, check_variable, collate_variable
from .worker import Result, Task, WorkerSetup

__all__ = ["DataLoader"]

_WORKER_TYPES = ("process", "thread")
_SMALL_BATCH_BYTES = 4 << 20  # batches smaller than this may share a message to a worker
MIN_SHARE = 16  # images a worker decodes at least, of a batch shared among workers


class DataLoader:
    """A drop-in replacement for ``torch.utils.data.DataLoader``.

    Arguments up to ``in_order`` have torch's meaning. fastload adds, keyword-only:

    - ``decode``: ``{field: ImageDecode(...)}``, image fields to decode (and augment) into
      fixed-size uint8 pixels in the workers, or by NVIDIA DALI in this process
      (``backend="dali"``: on the GPU with ``device="cuda"``; see fastload/decode/dali.py);
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
        decode: Mapping[str, ImageDecode] | None = None,
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
        if worker_type not in _WORKER_TYPES:
            raise ValueError(f"worker_type must be one of {_WORKER_TYPES}, got {worker_type!r}")
        self._planner: Planner | None = None
        if wants_plan(dataset, shuffle, seed, rank, world_size):
            taken = [
                name
                for name, v in (
                    ("sampler", sampler),
                    ("batch_sampler", batch_sampler),
                    ("generator", generator),
                )
                if v is not None
            ]
            if taken:
                raise ValueError(
                    f"{' and '.join(taken)} cannot be combined with seed=, "
                    "shuffle='global'/'block', rank=, world_size= or a Mix: the "
                    "loader's plan decides the order and the DDP split"
                )
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
            fast_capable = _fast_capable(dataset) and collate_fn is None
            # torch's DataLoader still checks the other arguments and, off the fast path,
            # loads the planned batches.
            batch_sampler = PlanBatchSampler(self._planner, as_lists=not fast_capable)
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
            _warn_if_unsplit(dataset)
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
        self.device = torch.device(device) if device is not None else None
        if self.device is not None and self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r}, but CUDA is not available here (torch "
                f"{torch.__version__} finds no GPU); leave device unset or use "
                "device='cpu'"
            )
        self._stats = LoaderStats()
        self._handed = 0  # the iteration's number of the batch handed out last
        policy = policy_of(bad_samples)
        self._budget = BadSampleBudget(policy) if policy is not None else None
        self._pool: WorkerPool | None = None
        self._copies: Any = None  # device.CopiesInFlight: host batches being copied to a GPU
        self._persistent_seed: int | None = None  # persistent workers' base seed
        self.fast = _fast_capable(dataset) and collate_fn is None and batch_size is not None
        if decode and not self.fast:
            raise ValueError(
                "decode= needs a fastload.Dataset, automatic batching and no collate_fn"
            )
        if transform is not None and not self.fast:
            raise ValueError(
                "transform= needs a fastload.Dataset, automatic batching and no "
                "collate_fn; with another dataset, transform in its "
                "__getitem__, as with torch's DataLoader"
            )
        if transform is not None and any(
            getattr(s, "backend", "cpu") == "dali" for s in (decode or {}).values()
        ):
            raise ValueError(
                "transform= and ImageDecode(backend='dali') cannot be combined: "
                "the transform runs in the workers, before DALI decodes"
            )
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform).__name__}")
        if variable and not self.fast:
            raise ValueError(
                "variable= needs a fastload.Dataset, automatic batching and no collate_fn"
            )
        if variable and transform is not None:
            raise ValueError(
                "variable= and transform= cannot be combined: the transform's "
                "outputs are its own (pad them in it)"
            )
        if policy is not None and not self.fast:
            raise ValueError(
                "bad_samples='skip' needs a fastload.Dataset, automatic batching "
                "and no collate_fn (it skips records that fail their checksum "
                "and images that fail to decode)"
            )
        self.batch_sampler = self._torch.batch_sampler
        self.sampler = self._torch.sampler
        if not self.fast:
            self._warn_about_block_cache(1)
            return
        if num_workers > 0 and not self.prefetch_factor:
            # torch accepts it here and fails on iteration; here it would wait forever
            raise ValueError("prefetch_factor must be at least 1 with num_workers > 0")
        # A batch_sampler that declares no batch_size is sized from each epoch's own pass over
        # it (iterating it here would draw from its random state: not torch's order then).
        size = batch_size if self._planner is not None else _declared_batch_size(self.batch_sampler)
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
        self._outputs = self._probe(transform) if transform is not None else ()
        self._pinned = self._wants_pinning(pin_memory)
        self._make_buffers(size or 1)
        self._dali: Any = None  # dalistage.DaliStage, made at the first iteration
        if self.layout.dali:
            from ..decode.dali import import_dali

            import_dali()  # not installed: say so now, not at the first batch
        self._warn_about_block_cache(num_workers if self._by_block else 1)

    def _warn_about_block_cache(self, processes: int) -> None:
        """Warn once where the order asks compressed blocks to be decompressed again: records
        drawn at random, or a Mix's windows, past what the block caches of ``processes``
        (those that share the blocks out) hold."""
        planner = self._planner
        if (
            planner is not None
            and planner.shuffle
            and planner.mode == "global"
            or isinstance(self.sampler, torch.utils.data.RandomSampler)
        ):
            _warn_if_rereading(self.dataset, processes)
        elif planner is not None and planner.mix_blocks is not None:
            _warn_if_windows_overflow(self.dataset, planner.window, processes)

    def _probe(self, transform: Callable[[dict], Any]) -> tuple:
        """The fields ``transform`` returns, from the dataset's first record read as a
        worker reads it (transform.probe_outputs)."""
        from .fill import fill_batch
        from .transform import probe_outputs, sample_at

        if len(self.dataset) == 0:
            return ()
        layout = BatchLayout(self.dataset.schema, 1, self._decode)
        slab = np.zeros(layout.slab_size, np.uint8)
        listed, _ = fill_batch(self.dataset, layout, slab, np.zeros(1, np.int64), (0, 0))
        sample = sample_at(layout.views(slab, 1), listed, layout.names, 0)
        return probe_outputs(transform, sample, 0)

    def _make_buffers(self, size: int) -> None:
        """The batch layout and the slab pool for batches of up to ``size`` samples."""
        room = _encoded_room(self.dataset, self._decode)
        self.layout = BatchLayout(
            self.dataset.schema,
            size,
            self._decode,
            self._transform,
            self._outputs,
            self._variable,
            encoded_bytes=room,
        )
        # Small batches travel several to a message (see _MessageSizer); the pool holds a slab
        # for every batch that can be in flight, plus the one the consumer is using.
        self._per_message = max(
            1, min(_MessageSizer.MAX_BATCHES, _SMALL_BATCH_BYTES // self.layout.slab_size)
        )
        # Batches of images are shared among the workers (_shares): prefetch_factor of them
        # keep every worker busy.
        workers = self.num_workers
        self._sharing = (
            bool(self.layout.decode)
            and not self.layout.dali
            and workers > 1
            and size >= 2 * MIN_SHARE
        )  # (a DALI field's images go end to end in the slab)
        self._by_block = not self._sharing and _split_by_block(
            self.dataset, self.layout, workers, self.worker_type, self.persistent_workers
        )
        if not workers:
            slabs = 2
        elif self._sharing:
            slabs = self.prefetch_factor + 2
        else:
            slabs = workers * self.prefetch_factor * self._per_message + 2
        self._slabs = SlabPool(
            self.layout.slab_size, slabs, shared=workers > 0 and self.worker_type == "process"
        )
        self._slabs.headroom = 8 + 2 * workers
        if self._pinned:
            from .device import register_slabs

            register_slabs(self._slabs)

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
            # in_order=False: which batch came is the one _deliver handed out last
            number = (lambda: self._handed) if self.fast and not self.in_order else None
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
            out["plan"] = self._plan_info()
        return out

    # -- the planned order (seed, DDP, resumption; see planning.py) --------------------------
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
            # This rank's counts (they differ between ranks): restored on the same rank.
            state["bad_samples"] = {"rank": planner.topology()[0], **self._budget.counts()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` at the next iteration: nothing repeated, nothing skipped,
        whatever the world size, worker count or worker type now. PlanStateError when it was
        saved for another dataset or with another seed / shuffle."""
        self._need_plan("load_state_dict").load_state_dict(state)
        if self._budget is not None:
            saved = state.get("bad_samples")
            rank, world = self._planner.topology()
            mine = (
                isinstance(saved, Mapping)
                and saved.get("rank") == rank
                and state.get("world_size") == world
            )
            self._budget.restore(saved if mine else None)
            self._stats.skipped = self._budget.skipped

    @property
    def padding(self) -> int:
        """Samples repeated (over all ranks) to give every rank equal batches this epoch."""
        return self._plan_info()["padding"] if self._planner is not None else 0

    @property
    def dropped(self) -> int:
        """Samples no rank serves this epoch (``drop_last`` with a tail)."""
        return self._plan_info()["dropped"] if self._planner is not None else 0

    def _plan_info(self) -> dict[str, int]:
        planner = self._planner
        assert planner is not None
        cur = planner.current
        if cur is not None:
            plan, epoch = cur.plan, cur.plan.epoch
        else:
            epoch = planner.position()[0]
            plan = planner.epoch_plan(epoch)
        return {
            "epoch": epoch,
            "rank": plan.rank,
            "world_size": plan.world_size,
            "padding": plan.padding,
            "dropped": plan.dropped,
        }

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
                stats.add_batch(_batch_len(batch) if self.batch_sampler is not None else 1, 0, {})
                if self.device is not None:
                    batch = self._to_device(batch)
            yield batch

    def _staged(self, batches: Iterator[Any]) -> Iterator[dict]:
        """``batches`` through the consumer's DALI stage, where image fields are DALI's
        (``_deliver`` then leaves each batch unfinished: see :meth:`_finish`)."""
        if not self.layout.dali:
            return batches
        if self._dali is None:
            from .dalistage import DaliStage

            self._dali = DaliStage(
                self.layout.dali, self.layout.batch_size, self.device, self._budget, self._stats
            )
        return self._finished(self._dali.run(batches))

    def _finished(self, decoded: Iterator[tuple[int, dict]]) -> Iterator[dict]:
        for number, batch in decoded:
            self._handed = number  # DALI ran a batch ahead: this is the one handed out
            yield self._finish(batch)

    def _fast_batches(self, base_seed: int) -> Iterator[dict]:
        plan = self._plan()
        if self.num_workers == 0:
            yield from self._in_process(plan, base_seed)
            return
        if not self.persistent_workers:
            pool = self._start_pool(base_seed)  # each iterator has its own workers, as in torch
        else:
            pool = self._pool or self._start_pool(base_seed)
            try:
                self._drain(pool)
            except (WorkerDiedError, LoaderTimeoutError):
                self._close_pool(pool)
                pool = self._start_pool(base_seed)
        try:
            yield from self._from_workers(pool, plan, base_seed)
        finally:
            if not self.persistent_workers or pool.broken:
                self._close_pool(pool)

    def _plan(self) -> Iterator[np.ndarray]:
        """The epoch's batches of dataset indices, each no larger than a slab holds. A
        batch_sampler without a batch_size is listed whole first (the epoch's one pass over
        it, as torch makes), and the buffers grow to its largest batch."""
        if not self._sized_per_epoch:
            return self._checked(_batches(self.batch_sampler))
        batches = [np.asarray(batch, dtype=np.int64) for batch in self.batch_sampler]
        largest = max((len(b) for b in batches), default=1)
        if largest > self.layout.batch_size:
            self._grow_buffers(largest)
        return iter(batches)

    def _checked(self, batches: Iterator[Any]) -> Iterator[np.ndarray]:
        capacity = self.layout.batch_size
        for batch in batches:
            indices = np.asarray(batch, dtype=np.int64)
            if len(indices) > capacity:
                raise ValueError(
                    f"batch_sampler yielded a batch of {len(indices)} indices, more than its "
                    f"batch_size attribute says ({capacity}), which sizes the loader's batch "
                    "buffers; give it its largest batch size, or no batch_size attribute at "
                    "all (each epoch's batches are then listed first)"
                )
            yield indices

    def _grow_buffers(self, size: int) -> None:
        """New buffers for batches of ``size``; workers of the old ones stop (persistent ones
        restart at the next epoch's start). Tensors of batches handed out keep their slabs."""
        if self._pool is not None:
            self._close_pool(self._pool)
        self._make_buffers(size)

    def _drain(self, pool: WorkerPool) -> None:
        """Receive, and free the slabs of, the batches an earlier epoch left in flight."""
        while any(pool.pending):
            worker, results = pool.get(self.timeout)
            pool.pending[worker] -= 1
            for r in results:
                if r.slab >= 0 and pool.returned(r.slab):
                    self._slabs.release(r.slab)

    def _in_process(self, plan: Iterator[np.ndarray], base_seed: int) -> Iterator[dict]:
        from .fill import fill_batch

        for j, indices in enumerate(_hinting(self.dataset, plan)):
            slab = self._slabs.acquire(grow=True)
            try:
                listed, timings = fill_batch(
                    self.dataset,
                    self.layout,
                    self._slabs.arrays[slab],
                    indices,
                    self._rng_seed(base_seed, j),
                    skip_bad=self._budget is not None,
                )
            except BaseException:
                self._slabs.release(slab)
                raise
            yield self._deliver(
                Result(j, slab, len(indices), listed, timings, bad=timings.pop("bad", None))
            )

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

    def _from_workers(
        self, pool: WorkerPool, plan: Iterator[np.ndarray], base_seed: int
    ) -> Iterator[dict]:
        """Batches from the workers, in order (or as they come with ``in_order=False``).

        Each worker has up to ``prefetch_factor`` messages in flight; a message carries as
        many batches as fit in about 4 ms of work (one, for image batches; up to 16, for small
        token batches), since every message costs both sides a wake-up. Batches of images to
        decode are shared out instead: every worker fills a share of each (see
        :meth:`_shares`), so each batch comes in a fraction of the time one worker takes.
        """
        workers, limit = self.num_workers, self.prefetch_factor
        pending = pool.pending  # messages in flight, per worker
        ready: dict[int, Result] = {}
        shares: dict[int, list[Result]] = {}  # batch -> the shares received so far
        sizer = _MessageSizer(self._per_message)
        next_batch = sent = turn = 0
        exhausted = False
        try:
            while True:
                while not exhausted:
                    sharing = self._sharing
                    if (
                        max(pending) if sharing or self._by_block else pending[turn % workers]
                    ) >= limit:
                        break
                    want, idle = 1 if sharing else sizer.batches, sent == next_batch
                    if not idle and self._slabs.free() < want:
                        # Wait for a whole message's slabs: a consumer slower than the
                        # workers frees them one batch at a time, and messages of one batch
                        # each would cost it a worker's wake-up per batch.
                        break
                    tasks = self._tasks(plan, sent, want, base_seed, idle=idle)
                    if not tasks:
                        exhausted = sent == next_batch or tasks is None
                        break
                    if sharing:
                        self._submit_shares(pool, tasks[0])
                    elif self._by_block:
                        for k in range(workers):
                            pool.submit(
                                k,
                                [
                                    Task(
                                        t.batch,
                                        t.slab,
                                        t.indices,
                                        t.rng_seed,
                                        part=k,
                                        parts=workers,
                                        by_block=True,
                                    )
                                    for t in tasks
                                ],
                                self._slabs,
                            )
                            pending[k] += 1
                    else:
                        pool.submit(turn % workers, tasks, self._slabs)
                        pending[turn % workers] += 1
                        turn += 1
                    sent += len(tasks)
                if next_batch == sent and exhausted:
                    return
                while (next_batch if self.in_order else next(iter(ready), None)) not in ready:
                    worker, results = pool.get(self.timeout)
                    pending[worker] -= 1
                    for r in results:
                        back = pool.returned(r.slab)
                        if r.batch < 0:  # its last word (worker_init_fn failed...): it is gone
                            pool.broken = True
                            r.error.reraise()
                        if r.parts > 1:
                            shares.setdefault(r.batch, []).append(r)
                            if not back:
                                continue
                            r = _merge_shares(shares.pop(r.batch))
                        ready[r.batch] = r
                        sizer.observe(r.timings)
                result = ready.pop(next_batch if self.in_order else next(iter(ready)))
                next_batch += 1
                if result.error is not None:
                    self._slabs.release(result.slab)
                    result.error.reraise()
                yield self._deliver(result)
        finally:
            for r in ready.values():  # filled but never delivered (an error, or a break)
                self._slabs.release(r.slab)

    def _submit_shares(self, pool: WorkerPool, task: Task) -> None:
        """Send one share of ``task``'s batch to each of the first workers (as many as
        :meth:`_shares` says)."""
        parts = self._shares(len(task.indices))
        for k in range(parts):
            share = (
                task
                if parts == 1
                else Task(task.batch, task.slab, task.indices, task.rng_seed, part=k, parts=parts)
            )
            pool.submit(k, [share], self._slabs)
            pool.pending[k] += 1

    def _shares(self, n: int) -> int:
        """Workers that share a batch of ``n`` images: all of them, as long as each decodes
        at least ``MIN_SHARE`` images (below that, a share costs more in messages than it
        saves). One worker decoding a whole batch of 256 took ~1 s before the first batch
        came, and workers filling whole batches side by side deliver them in bursts, which
        a consumer at 80% of the top rate waited on."""
        return max(1, min(self.num_workers, n // MIN_SHARE))

    def _tasks(
        self, plan: Iterator[np.ndarray], first: int, count: int, base_seed: int, idle: bool
    ) -> list[Task] | None:
        """Up to ``count`` tasks for the next batches of ``plan``, each with a free slab.
        Returns None when the plan is exhausted and [] when no slab is free."""
        tasks: list[Task] = []
        # Grow only when nothing is in flight (the consumer holds every slab).
        while len(tasks) < count:
            grow = idle and not tasks
            slab = self._slabs.acquire(grow=grow)
            if slab is None:
                break
            try:
                indices = next(plan, None)
            except BaseException:
                self._slabs.release(slab)
                raise
            if indices is None:
                self._slabs.release(slab)
                return tasks or None
            batch = first + len(tasks)
            tasks.append(Task(batch, slab, indices, self._rng_seed(base_seed, batch)))
        return tasks

    def _rng_seed(self, base_seed: int, j: int) -> tuple:
        """Augmentation seed of the iteration's j-th batch (planned: by its epoch position)."""
        if self._planner is not None and self._planner.current is not None:
            return self._planner.current.rng_seed(j)
        return (base_seed, j)

    def _deliver(self, result: Result) -> Any:
        """The batch of a filled slab, as tensors over the slab (no copy) plus listed fields.
        With DALI image fields: an :class:`Unpacked` batch for the DALI stage instead."""
        start = time.perf_counter()
        lease = self._slabs.lease(result.slab)
        self._handed = result.batch
        read, bad = result.samples, result.bad or []
        for name, area in self.layout.encoded.items():  # a DALI field's images in the slab
            images = result.listed[name]
            if images.data is None:
                images.data = self.layout.views(lease, read)[area].reshape(-1)
        kept = None
        if self._budget is not None:
            kept = self._skip_bad(result, lease, count=not self.layout.dali)
        views = self.layout.views(lease, result.samples)
        batch: dict[str, Any] = {}
        for name in self.layout.names:
            if name in views:
                batch[name] = torch.from_numpy(views[name])
            else:
                batch[name] = result.listed[name]
        del views, lease  # the batch's tensors now own the slab
        self._stats.stage_seconds["collate"] += time.perf_counter() - start
        self._stats.add_batch(result.samples, result.timings.get("bytes", 0), result.timings)
        if self.layout.dali:
            from .dalistage import Unpacked

            rows = kept if kept is not None else np.arange(read)
            return Unpacked(batch, result.batch, read, list(bad), rows)
        return self._finish(batch)

    def _finish(self, batch: dict) -> dict:
        """A batch's variable-length fields made into tensors, and the batch moved to the
        loader's device."""
        if self._collated:
            start = time.perf_counter()
            batch = collate_variable(batch, self._collated, self.dataset.schema)
            self._stats.stage_seconds["collate"] += time.perf_counter() - start
        if self.device is not None:
            batch = self._to_device(batch)
        return batch

    def _skip_bad(self, result: Result, slab: np.ndarray, count: bool = True) -> np.ndarray:
        """Drop ``result``'s skipped rows: the rows after them move up in the slab, listed
        fields lose them, and (``count``) the budget counts them (raising once it is spent).
        Returns the rows kept."""
        n = result.samples
        if count:
            self._budget.add(n, result.bad or ())  # (on an error the lease frees the slab)
        if not result.bad:
            return np.arange(n)
        dropped = {row for row, _ in result.bad}
        keep = np.array([i for i in range(n) if i not in dropped], np.int64)
        areas = set(self.layout.encoded.values())  # not rows: their DaliBatch takes its own
        for name, v in self.layout.views(slab, n).items():
            if name not in areas:
                v[: len(keep)] = v[keep]
        result.listed = {
            name: ([values[i] for i in keep] if isinstance(values, list) else values[keep])
            for name, values in result.listed.items()
        }
        result.samples = len(keep)
        self._stats.skipped += len(dropped)
        return keep

    # -- pinning and device transfer ------------------------------------------------------
    def _wants_pinning(self, pin_memory: bool) -> bool:
        """Whether slabs are registered with CUDA (see _make_buffers); torch's warning when
        pinning is asked for without a GPU."""
        if not (pin_memory or (self.device is not None and self.device.type == "cuda")):
            return False
        if not torch.cuda.is_available():
            if pin_memory:
                warnings.warn(
                    "'pin_memory' argument is set as true but no accelerator is "
                    "found, then device pinned memory won't be used.",
                    stacklevel=2,
                )
            return False
        return True

    def _to_device(self, batch: dict) -> dict:
        from .device import CopiesInFlight, move, to_device

        start = time.perf_counter()
        if self.fast and self._copies is None:
            self._copies = CopiesInFlight()
        out = to_device(batch, self.device, self._copies) if self.fast else move(batch, self.device)
        self._stats.stage_seconds["transfer"] += time.perf_counter() - start
        return out


class _MessageSizer:
    """How many batches to put in one message to a worker: about 4 ms of work. Each message
    costs the consumer a pipe write that wakes a worker (~0.25 ms of its wall time on 2 cores)
    and a read, so small batches travel many to a message (each batch in flight holds a
    slab)."""

    TARGET_SECONDS = 0.004
    MAX_BATCHES = 16  # 32 was no faster (tokens, batch 16) and held twice the slabs

    def __init__(self, limit: int) -> None:
        self.limit = limit  # what the slab pool was sized for
        self.seconds_per_batch: float | None = None

    @property
    def batches(self) -> int:
        if not self.seconds_per_batch:
            return 1
        return max(1, min(self.limit, int(self.TARGET_SECONDS / self.seconds_per_batch)))

    def observe(self, timings: dict | None) -> None:
        if timings:
            t = timings.get("read", 0.0) + timings.get("decode", 0.0)
            old = self.seconds_per_batch
            self.seconds_per_batch = t if old is None else 0.8 * old + 0.2 * t


def _merge_shares(shares: list[Result]) -> Result:
    """One batch's result from those of its shares (received in any order): samples, bytes,
    stage times and counters summed; listed fields joined in row order; the error of the
    first share that failed."""
    shares = sorted(shares, key=lambda r: r.part)
    first = shares[0]
    error = next((r.error for r in shares if r.error is not None), None)
    if error is not None:
        return Result(first.batch, first.slab, error=error)
    timings: dict[str, Any] = {}
    listed: dict[str, Any] = {}
    for r in shares:
        for key, value in (r.timings or {}).items():
            if isinstance(value, dict):
                counters = timings.setdefault(key, {})
                for name, count in value.items():
                    counters[name] = counters.get(name, 0) + count
            else:
                timings[key] = timings.get(key, 0) + value
        for name, values in (r.listed or {}).items():
            listed.setdefault(name, []).append(values)
    samples = sum(r.samples for r in shares)
    if any(r.rows is not None for r in shares):  # shares by block: rows anywhere in the batch
        joined = _scattered([r for r in shares if r.rows is not None], samples)
    else:  # contiguous shares, in order
        joined = {
            name: (
                np.concatenate(v)
                if isinstance(v[0], np.ndarray)
                else [x for part in v for x in part]
            )
            for name, v in listed.items()
        }
    bad = [b for r in shares for b in (r.bad or ())]
    return Result(first.batch, first.slab, samples, joined, timings, bad=bad or None)


def _scattered(shares: list[Result], n: int) -> dict[str, Any]:
    """The listed fields of a batch of ``n`` rows whose shares hold the rows ``r.rows``."""
    out: dict[str, Any] = {}
    for r in shares:
        for name, values in r.listed.items():
            if isinstance(values, np.ndarray):
                whole = out.setdefault(name, np.empty((n, *values.shape[1:]), values.dtype))
                whole[r.rows] = values
            else:
                whole = out.setdefault(name, [None] * n)
                for row, value in zip(r.rows.tolist(), values):
                    whole[row] = value
    return out


def _hinting(dataset: Any, plan: Iterator[np.ndarray], ahead: int = 2) -> Iterator[np.ndarray]:
    """``plan``'s batches; for a remote dataset, each yielded while the blocks of the next
    ``ahead`` are already being fetched (in the dataset's background threads), as workers do
    for their queued batches. Local datasets: ``plan`` itself."""
    if not getattr(dataset, "remote", False) or not callable(getattr(dataset, "prefetch", None)):
        yield from plan
        return
    queued: deque = deque()
    for indices in plan:
        queued.append(indices)
        dataset.prefetch(indices)  # in plan order: the batch needed first is fetched first
        if len(queued) > ahead:
            yield queued.popleft()
    yield from queued


MAX_EAGER_ORDER = 1 << 24  # indices _batches draws at once (8 bytes each)


def _batches(batch_sampler: Any) -> Iterator[Any]:
    """``batch_sampler``'s batches. For torch's own BatchSampler over a SequentialSampler or a
    RandomSampler without replacement, the same batches are slices of the sampler's whole
    order, drawn at the epoch's first batch: its loop over single indices cost ~10 us per
    batch of 16, a fifth of the consumer's work per token batch. The sampler uses its
    generator exactly as when iterated lazily (the same draws, in the same order; a draw
    torch makes at the epoch's end happens at its start instead)."""
    sampler = getattr(batch_sampler, "sampler", None)
    plain = type(sampler) is SequentialSampler or (
        type(sampler) is RandomSampler and not sampler.replacement
    )
    if type(batch_sampler) is not BatchSampler or not plain or len(sampler) > MAX_EAGER_ORDER:
        yield from batch_sampler
        return
    order = np.fromiter(iter(sampler), np.int64)
    size = batch_sampler.batch_size
    end = len(order) - len(order) % size if batch_sampler.drop_last else len(order)
    for start in range(0, end, size):
        yield order[start : start + size]


def _warn_if_unsplit(dataset: Any) -> None:
    """Under DDP, torch's own order (no sampler given, no seed=) hands every rank the whole
    dataset, as torch's DataLoader does; it is rarely what was meant, so say it, once."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return  # an iterable dataset splits itself, or not, as it likes
    try:
        world = current_topology().world_size
    except ValueError:
        return  # a malformed WORLD_SIZE: the planned order's own error names it
    if world > 1:
        warnings.warn(
            f"fastload.DataLoader: this is one of {world} ranks (torch.distributed "
            "or WORLD_SIZE), but nothing splits the dataset among them: every rank "
            "reads all of it, as with torch's DataLoader without a "
            "DistributedSampler. Pass seed= to have the loader split it (each "
            "sample once per epoch over all ranks, resumable), or a "
            "DistributedSampler.",
            stacklevel=3,
        )


def _compressed(dataset: Any) -> list[Storage]:
    """The storage of each fastload dataset in ``dataset`` (a Mix's too) whose blocks are
    mostly compressed (see :attr:`Storage.compressed`); none for another kind of dataset."""
    if not isinstance(dataset, (Dataset, Mix)):
        return []
    return [s for s in dataset.storage() if s.compressed]


def _split_by_block(
    dataset: Any, layout: BatchLayout, workers: int, worker_type: str, persistent: bool
) -> bool:
    """Whether worker processes share out each batch by storage block (``fill_block_share``)
    rather than fill whole batches: for a compressed dataset (no images to decode or
    transform), where its blocks are decompressed more than once otherwise. Whole batches
    have every worker decompress nearly every block into a block cache that is a copy of the
    others':
    once a dataset outgrows one cache, every worker decompresses over and over what the
    caches of all would hold (100 MB of zstd tokens, 64 MiB caches, 2 workers: 7,000
    samples/s whole, 336,000 shared out), and workers started afresh each epoch decompress
    it all each. A dataset that fits one cache, read by persistent workers, is decompressed
    once per worker and then read fastest whole (a share costs each worker a step per
    batch). Thread workers share one block cache already."""
    if (
        workers < 2
        or worker_type != "process"
        or not _fast_capable(dataset)
        or layout.decode
        or layout.dali
        or layout.transform is not None
    ):
        return False
    return any(s.raw_bytes > s.block_cache or not persistent for s in _compressed(dataset))


def _warn_if_rereading(dataset: Any, processes: int = 1) -> None:
    """Records drawn at random from compressed blocks decompress their whole block each,
    once the dataset's decompressed size passes what the ``processes`` that share its blocks
    out keep (``block_cache`` each): say so, once, with the ways out."""
    for s in _compressed(dataset):
        raw, limit = s.raw_bytes, s.block_cache * processes
        if raw <= limit:
            continue
        per_block = s.records / max(1, s.blocks)
        ways = [
            "shuffle='block' (each block read once per epoch)",
            "a dataset converted with --compression none (nothing to decompress)",
            "a larger block_cache",
        ]
        warnings.warn(
            f"fastload.DataLoader: {s.name} is read in a random order from "
            f"compressed blocks ({format_size(raw)} decompressed, more than "
            f"{_kept(limit, processes)}: Dataset(block_cache=)), "
            f"so about {1 - limit / raw:.0%} of the records read will decompress "
            f"their whole block (~{per_block:,.0f} records) again. Instead: "
            f"{'; '.join(ways)}.",
            stacklevel=4,
        )


def _kept(limit: int, processes: int) -> str:
    """What the block caches of ``processes`` that share the blocks out hold, in words."""
    if processes == 1:
        return f"the {format_size(limit)} each process keeps"
    return f"the {format_size(limit)} {processes} worker processes keep, each its share"


def _warn_if_windows_overflow(mix: Mix, window: int, processes: int = 1) -> None:
    """A Mix in block order reads a stratum's draws of each dataset from about two windows
    of its blocks; a compressed dataset whose block caches (those of the ``processes`` that
    share its blocks out) hold fewer decompresses some of them again. Say so, once."""
    for s in _compressed(mix):
        raw, limit = s.raw_bytes, s.block_cache * processes
        need = min(raw, 2 * window * raw / max(1, s.blocks))
        if need <= limit:
            continue
        warnings.warn(
            f"fastload.DataLoader: {s.name} is read in block order from compressed "
            f"blocks, about {format_size(need)} of them (2 windows of {window}) at a "
            f"time, more than {_kept(limit, processes)} "
            "(Dataset(block_cache=)): some will be decompressed again. Instead: a "
            "larger block_cache, or a smaller block_window.",
            stacklevel=4,
        )


def _encoded_room(dataset: Any, decode: Mapping[str, ImageDecode] | None) -> int:
    """Bytes per sample a batch slab keeps for each DALI image field's encoded images
    (0: none is DALI's): twice a record's mean size, so nearly every batch fits (one that
    does not sends its images in the worker's message instead)."""
    if not any(spec.backend == "dali" for spec in (decode or {}).values()):
        return 0
    parts = dataset.storage()
    records = sum(s.records for s in parts)
    raw = sum(s.raw_bytes for s in parts)
    return max(4096, -(-2 * raw // max(records, 1) // 64) * 64)


def _fast_capable(dataset: Any) -> bool:
    """A fastload Dataset, or a Mix of fastload Datasets with one schema."""
    return isinstance(dataset, Dataset) or (isinstance(dataset, Mix) and dataset.schema is not None)


def _declared_batch_size(batch_sampler) -> int | None:
    size = getattr(batch_sampler, "batch_size", None)
    return size if isinstance(size, int) and size > 0 else None


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, Mapping):
        batch = next(iter(batch.values()), ())
    elif isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    try:
        return len(batch)
    except TypeError:
        return 1
