"""What ``iter(loader)`` returns: torch's iterator's public behaviour over either path.

Failure semantics (if the code disagrees with this comment, the code is wrong):

- an exception from one batch (its dataset read, decode, transform, collate; in a worker or
  here) is raised by that batch's ``next()``; the next ``next()`` returns the batch after it,
  as torch's DataLoader does. A raised batch counts as handed out (a resumed run goes on
  after it);
- a worker that died, a ``timeout`` that expired, or an error in the order itself (a sampler
  that raised) ends the iteration: that ``next()`` raises (WorkerDiedError and
  LoaderTimeoutError name the batches and their dataset indices), the workers are stopped,
  every later ``next()`` raises StopIteration, and ``iter(loader)`` starts afresh (persistent
  workers too);
- whatever ends an iteration early (a break, an error, ``del``) stops its workers, except
  persistent ones, which the next iteration takes over and the loader's ``close()`` (or the
  interpreter's exit: exits.py) stops.

Nothing happens before the first ``next()`` (torch starts its workers in ``iter()``): an epoch
set with ``set_epoch`` after ``iter()`` is the one the iteration follows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .device import move
from .exits import close_at_exit
from .fastpath import FastPath, Settings, Workers
from .general import (
    CountedIterable,
    Tagged,
    TorchView,
    WorkerSide,
    carried_positions,
    fatal,
    note,
    starting_positions,
    stateful_dataset,
    torch_iterator,
    worker_resume,
)
from .messages import Failed
from .planned_order import Cursor, Planner
from .sampling import batch_len
from .stats import LoaderStats
from .torch_order import EpochRecord, TorchOrder

__all__ = ["Loading", "LoaderIterator"]


@dataclass
class Loading:
    """What an iterator needs of its loader (not the loader: a loader that is only the
    temporary of a ``for`` statement goes while its iterator runs, as torch's may)."""

    dataset: Any
    iterable: bool  # an IterableDataset
    auto_collation: bool
    batch_size: int | None
    drop_last: bool
    planner: Planner | None
    order: TorchOrder | None
    index_sampler: Any  # what torch's iterators, or the fast path, draw batches from
    fast: FastPath | None
    stats: LoaderStats
    device: torch.device | None
    snapshot_every: int

    def length(self) -> int:
        """``len(loader)``: the batches of a whole epoch, as torch counts them."""
        if self.planner is not None:
            return self.planner.epoch_batches()
        if self.iterable:
            n = len(self.dataset)
            if self.batch_size is None:
                return n
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return len(self.index_sampler)


class LoaderIterator:
    """The iterator of a fastload DataLoader (see the module doc). Like torch's, it has a
    length (the loader's), is its own iterator, and cannot be pickled; with persistent
    workers the loader hands out the same one for every epoch."""

    def __init__(self, loading: Loading, settings: Settings) -> None:
        self._loading, self._settings = loading, settings
        self._epoch: Any = None  # _FastEpoch or _TorchEpoch, made at the first next()
        self._done = False
        self.broken = False
        self._workers = Workers(settings)
        self._torch_it: Any = None  # torch's iterator (general path), kept by persistent ones
        self._torch_fresh = False  # it belongs to a resumed epoch: not kept after it
        self._base_seed: int | None = None  # persistent workers keep their first
        self._known: dict = {}  # per worker, its position at the end of the last epoch
        self._view: TorchView | None = None

    def __iter__(self) -> LoaderIterator:
        return self

    def __len__(self) -> int:
        return self._loading.length()

    @property
    def loading(self) -> Loading:
        """What this iterator loads (the loader's, or the general path's copy of it)."""
        return self._loading

    @property
    def pool(self) -> Any:
        """The fast path's worker pool, while there is one."""
        return self._workers.pool

    def __getstate__(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} cannot be pickled")

    def restart(self, settings: Settings) -> None:
        """A new epoch on the same (persistent) workers."""
        self._end(finished=False)
        self._settings, self._done = settings, False

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        stats = self._loading.stats
        stats.start()
        start = time.perf_counter()
        try:
            if self._epoch is None:
                self._epoch = self._begin()
            j, item = self._epoch.next()
        except StopIteration:
            self._end(finished=True)
            raise
        except BaseException:
            self.broken = True
            self._end(finished=False)
            self.close()
            raise
        finally:
            stats.wait_seconds += time.perf_counter() - start
        self._epoch.handed_out(j)
        if isinstance(item, Failed):
            raise item.error
        return item

    # -- epochs ------------------------------------------------------------------------------
    def _begin(self) -> Any:
        loading, settings = self._loading, self._settings
        cursor = loading.planner.begin() if loading.planner is not None else None
        if loading.fast is not None:
            return self._fast_epoch(loading.fast, cursor)
        record = (
            self._order().begin(settings.generator, draw_seed=False) if cursor is None else None
        )
        return _TorchEpoch(self, cursor, record)

    def _order(self) -> TorchOrder:
        order = self._loading.order
        if order is None:  # (only a loader without a plan iterates in torch's order)
            raise RuntimeError("a loader with a planned order has no torch order")
        return order

    def _fast_epoch(self, fast: FastPath, cursor: Cursor | None) -> _FastEpoch:
        loading, settings = self._loading, self._settings
        fast.fit(settings, self._workers)
        rng_seed: Callable[[int], tuple]
        if cursor is not None:
            batches = iter(loading.index_sampler)
            base_seed, rng_seed = cursor.aug_seed, cursor.rng_seed
            record = None
        else:
            order = self._order()
            keep = settings.persistent_workers and self._base_seed is not None
            record = order.begin(settings.generator, draw_seed=not keep)
            if record.base_seed is None or (keep and record.resume is None):
                record.base_seed = self._base_seed
            if record.base_seed is None:  # (drawn unless kept, and kept only once drawn)
                raise RuntimeError("an epoch in torch's order began without a base seed")
            base_seed = self._base_seed = int(record.base_seed)
            batches = order.index.batches(eager=True)

            def record_seed(j: int, record: EpochRecord = record) -> tuple:
                return (base_seed, record.epoch_step(j))

            rng_seed = record_seed

        epoch = fast.epoch(batches, settings, self._workers, base_seed, rng_seed)
        return _FastEpoch(epoch, cursor, record)

    def _end(self, finished: bool) -> None:
        epoch, self._epoch = self._epoch, None
        self._done = True
        if epoch is None:
            return
        epoch.end(finished)
        if epoch.record is not None:  # what persistent workers go on from
            self._known = {**epoch.record.initial, **epoch.record.workers}
        if self._torch_it is not None and (
            not self._settings.persistent_workers or self._torch_fresh
        ):
            self._close_torch()

    def close(self) -> None:
        """Stop this iterator's workers now."""
        if self._epoch is not None:
            self._epoch.close()
        self._workers.close()
        self._close_torch()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- the general path's torch iterator ------------------------------------------------
    def torch_iterator(self, record: EpochRecord | None) -> Any:
        """torch's iterator for this epoch: the persistent one (reset), or a new one over
        a view of the loader with the parts a resumable state needs (general.py)."""
        loading, settings = self._loading, self._settings
        resume = record.resume.state if record is not None and record.resume else None
        per_worker = resume is not None and (resume.get("iterable") or resume.get("dataset"))
        if self._torch_it is not None and not per_worker:
            self._torch_it._reset(self._view)
            if record is not None:  # the same workers: they go on from where they were
                record.initial = carried_positions(self._known, iterable=loading.iterable)
                record.base_seed = self._base_seed
            return self._torch_it
        self._close_torch()
        carried = None if resume is not None else self._carried(record)
        self._view = self._make_view(record, resume or carried)
        if carried is not None and record is not None:
            # (the saved run's persistent workers drew no new base seed: undone at the
            # epoch's first draw, which torch's iterator makes as it starts)
            generator = settings.generator
            record.rewind = torch.get_rng_state() if generator is None else generator.get_state()
        self._torch_it = torch_iterator(self._view)
        self._torch_fresh = bool(per_worker)
        if settings.num_workers > 0:
            close_at_exit(self)
        if record is not None and carried is not None:
            record.base_seed = self._base_seed
        elif record is not None:
            record.base_seed = self._base_seed = getattr(self._torch_it, "_base_seed", None)
            if resume is not None and resume.get("base_seed") is not None:
                record.base_seed = resume["base_seed"]
        return self._torch_it

    def worker_states(self) -> dict[str, Any]:
        """Per worker, the state of its copy of a dataset with a state of its own at the end
        of the last epoch (what persistent workers go on from)."""
        if self._loading.iterable:
            return {}
        return {str(w): known["state"] for w, known in self._known.items() if "state" in known}

    def _carried(self, record: EpochRecord | None) -> dict[str, Any] | None:
        """After a resumed epoch (its workers, which played the saved run's, stopped with
        it), what new persistent workers of a dataset with a state of its own start from:
        where those ended, as the saved run's persistent workers go on."""
        loading, settings = self._loading, self._settings
        if record is None or loading.iterable or not settings.persistent_workers:
            return None
        states = self.worker_states()
        if not states:
            return None
        workers = {"num_workers": settings.num_workers, "workers": states}
        return {"consumed": 0, "finished": True, "dataset": workers}

    def _make_view(self, record: EpochRecord | None, resume: Any) -> TorchView:
        loading, settings = self._loading, self._settings
        dataset, init, collate = loading.dataset, settings.worker_init_fn, settings.collate_fn
        workers = settings.num_workers
        map_state = stateful_dataset(dataset) and not loading.iterable and record is not None
        if map_state and workers == 0 and resume and "main" in (resume.get("dataset") or {}):
            dataset.load_state_dict(resume["dataset"]["main"])
        if collate is None:  # (torch's DataLoader always has one)
            raise ValueError("the general path needs a collate_fn")
        if loading.iterable or workers > 0:
            saved = (resume or {}).get("iterable" if loading.iterable else "dataset")
            consumed = int(resume["consumed"]) if resume and not resume["finished"] else 0
            positions, rotation = worker_resume(saved, workers, consumed)
            counted = CountedIterable(dataset) if loading.iterable else None
            side = WorkerSide(
                init=init,
                collate=collate,
                dataset=dataset,
                counted=counted,
                tag_state=map_state and workers > 0,
                num_workers=workers,
                resume=positions,
                rotation=rotation,
                base_seed=resume.get("base_seed") if positions and resume else None,
                every=loading.snapshot_every,
            )
            if record is not None:
                record.rotation = rotation
                record.initial = (
                    positions
                    if loading.iterable
                    else {w: {"state": state} for w, state in positions.items()}
                ) or starting_positions(
                    dataset, iterable=loading.iterable, map_state=map_state, workers=workers
                )
            dataset = counted if counted is not None else dataset
            init = side.init if workers > 0 else init
            collate = side.collate if (counted is not None or side.tag_state) else collate
        return TorchView(
            dataset=dataset,
            _dataset_kind=1 if loading.iterable else 0,
            _IterableDataset_len_called=settings.len_called,
            _auto_collation=loading.auto_collation,
            drop_last=loading.drop_last,
            _index_sampler=loading.index_sampler,
            num_workers=workers,
            pin_memory=settings.pin_memory,
            pin_memory_device=settings.pin_memory_device,
            timeout=settings.timeout,
            collate_fn=collate,
            generator=settings.generator,
            persistent_workers=settings.persistent_workers,
            prefetch_factor=settings.prefetch_factor,
            in_order=settings.in_order,
            multiprocessing_context=settings.multiprocessing_context,
            worker_init_fn=init,
        )

    def _close_torch(self) -> None:
        it, self._torch_it = self._torch_it, None
        if it is not None:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()


class _Epoch:
    """What both paths' epochs record: the batches handed out, and the epoch's end, in the
    planned order's cursor or in torch's order's record."""

    cursor: Cursor | None
    record: EpochRecord | None

    def handed_out(self, j: int) -> None:
        if self.cursor is not None:
            self.cursor.handed_out(self.cursor.plan_batch(j))
        elif self.record is not None:
            self.record.handed_out(self.record.epoch_step(j))

    def end(self, finished: bool) -> None:
        if finished:
            if self.cursor is not None:
                self.cursor.done = True
            elif self.record is not None:
                self.record.finished = True
        self.close()

    def close(self) -> None:
        pass


class _FastEpoch(_Epoch):
    """One epoch of the fast path: ``(j, batch or Failed)`` from fastpath.py."""

    def __init__(self, batches: Any, cursor: Cursor | None, record: EpochRecord | None) -> None:
        self.batches, self.cursor, self.record = batches, cursor, record

    def next(self) -> tuple[int, Any]:
        return next(self.batches)

    def close(self) -> None:
        self.batches.close()  # (a generator: its cleanup runs now, not when it is collected)


class _TorchEpoch(_Epoch):
    """One epoch of the general path: torch's iterator, its batches numbered in order."""

    def __init__(
        self, owner: LoaderIterator, cursor: Cursor | None, record: EpochRecord | None
    ) -> None:
        self.cursor, self.record = cursor, record
        loading = owner.loading
        self.stats, self.device = loading.stats, loading.device
        self.auto_collation = loading.auto_collation
        self.it = owner.torch_iterator(record)
        self.i = 0

    def next(self) -> tuple[int, Any]:
        i = self.i
        try:
            out = next(self.it)
        except StopIteration:
            raise
        except BaseException as e:
            step = self.record.epoch_step(i) if self.record is not None else i
            ended = fatal(e, step, self.record)
            if ended is e:
                raise
            if ended is not None:
                raise ended from e
            self.i += 1
            return i, Failed(e)
        self.i += 1
        if isinstance(out, Tagged):
            if self.record is not None:
                note(self.record, out.meta)
            out = out.batch
        # without automatic batching (batch_size=None) each item is one sample
        self.stats.add_batch(batch_len(out) if self.auto_collation else 1, 0, {})
        if self.device is not None:
            start = time.perf_counter()
            out = move(out, self.device)
            self.stats.stage_seconds["transfer"] += time.perf_counter() - start
        return i, out
