"""The DataLoader's general path: any dataset, or a custom ``collate_fn``, loaded by torch's own
iterators, so that batches, worker seeding, ``get_worker_info()``, pinning and errors are
torch's.

torch's iterator classes read what they need from the loader they are given; the general path
gives them a :class:`TorchView` of the loader instead, which differs in what the resumable
state needs from the workers (:class:`WorkerSide`):

- ``worker_init_fn``: in each worker first puts back the signal handlers it inherited (see
  exits.py), then, for a resumed epoch, makes the worker the one whose batches it now makes
  (``get_worker_info()`` and torch's seeds say so) and loads that worker's dataset state;
- ``collate_fn``: the user's, whose batch travels with what the consumer needs to save the
  worker's position (:class:`Tagged`): an IterableDataset's items taken so far and its state,
  or a map-style dataset's own state (``state_dict``);
- ``dataset``: an IterableDataset counted item by item (:class:`CountedIterable`).

Only the parts a dataset needs are swapped in: a plain map-style dataset with no workers runs
on torch's iterator as it is.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ..errors import LoaderTimeoutError, PlanStateError, WorkerDiedError
from .exits import reset_inherited_handlers
from .pool import describe_batches
from .torch_order import EpochRecord

__all__ = [
    "TorchView",
    "WorkerSide",
    "CountedIterable",
    "Tagged",
    "torch_iterator",
    "fatal",
    "stateful_dataset",
    "worker_resume",
]


def stateful_dataset(dataset: Any) -> bool:
    """A dataset that keeps state of its own (``state_dict`` / ``load_state_dict``)."""
    return callable(getattr(dataset, "state_dict", None)) and callable(
        getattr(dataset, "load_state_dict", None)
    )


class TorchView:
    """What torch's iterator classes read of a DataLoader, with the general path's parts."""

    num_workers: int

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)


def torch_iterator(view: TorchView) -> Any:
    """torch's own iterator over ``view`` (single-process or with worker processes)."""
    from torch.utils.data.dataloader import (
        _MultiProcessingDataLoaderIter,
        _SingleProcessDataLoaderIter,
    )

    loader = cast(Any, view)  # a DataLoader as far as torch's iterators look
    if view.num_workers == 0:
        return _SingleProcessDataLoaderIter(loader)
    return _MultiProcessingDataLoaderIter(loader)


class Tagged:
    """A batch and what its worker said about its position (see the module doc); pinned
    as the batch would be (torch's pin-memory thread calls ``pin_memory``)."""

    __slots__ = ("batch", "meta")

    def __init__(self, batch: Any, meta: dict) -> None:
        self.batch, self.meta = batch, meta

    def pin_memory(self, device: Any = None) -> Tagged:
        from torch.utils.data._utils.pin_memory import pin_memory

        return Tagged(pin_memory(self.batch, device), self.meta)


class CountedIterable(IterableDataset):
    """An IterableDataset yielding what ``inner`` yields, counting the items each worker
    took this epoch; a resumed worker first loads its saved state and skips the items taken
    since it was saved (all of them, for a dataset without a state of its own)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.side: WorkerSide | None = None
        self.items = 0
        self.ended = False
        self.iterator: Any = None

    def __iter__(self) -> Iterator[Any]:
        side = self.side
        saved = (side.take_resume() if side is not None else None) or {}
        if side is not None:
            side.batches = 0
        self.ended = bool(saved and saved.get("ended"))
        if self.ended:  # its items had all been taken: nothing to load, nothing to give
            self.items = int(saved["items"])
            return _Counting(self)
        source = saved.get("source")
        if source == "dataset":
            self.inner.load_state_dict(saved["state"])
        self.iterator = iter(self.inner)
        if source == "iterator":
            self.iterator.load_state_dict(saved["state"])
        self.items = int(saved["at_state"]) if source else 0
        for _ in range(int(saved["items"]) - self.items if saved else 0):
            try:
                next(self.iterator)  # taken before the state was saved: not again
            except StopIteration:
                break
            self.items += 1
        return _Counting(self)

    def state(self) -> tuple[str | None, Any]:
        """(where the state came from, the state): the iterator's own, else the
        dataset's, else none (the worker resumes by skipping the items it took)."""
        it = self.iterator
        if stateful_dataset(it) and it is not self.inner:
            return "iterator", it.state_dict()
        if stateful_dataset(self.inner):
            return "dataset", self.inner.state_dict()
        return None, None


class _Counting:
    def __init__(self, source: CountedIterable) -> None:
        self.source = source

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        source = self.source
        if source.ended:
            raise StopIteration
        try:
            item = next(source.iterator)
        except StopIteration:
            source.ended = True
            raise
        source.items += 1
        return item


class WorkerSide:
    """What the general path runs in each worker (its init, its collate; see the module
    doc). ``resume``: per worker (logical id), what a resumed epoch loads there;
    ``rotation``: worker slot j makes the batches of worker ``(j + rotation) % n`` of the
    saved run; ``every``: an IterableDataset's state travels with every ``every``-th batch
    of each worker (``snapshot_every_n_steps``)."""

    def __init__(
        self,
        *,
        init: Callable[[int], None] | None,
        collate: Callable[[Any], Any],
        dataset: Any,
        counted: CountedIterable | None,
        tag_state: bool,
        num_workers: int,
        resume: Mapping[int, Any] | None = None,
        rotation: int = 0,
        base_seed: int | None = None,
        every: int = 1,
    ) -> None:
        self.user_init, self.user_collate = init, collate
        self.dataset, self.counted = dataset, counted
        self.tag_state = tag_state
        self.num_workers = max(1, num_workers)
        self.resume = dict(resume or {})
        self.rotation, self.base_seed, self.every = rotation, base_seed, every
        self.logical = 0
        self.batches = 0
        if counted is not None:
            counted.side = self

    def init(self, slot: int) -> None:
        """torch's ``worker_init_fn`` in worker slot ``slot``."""
        reset_inherited_handlers(ignore_interrupt=False)
        self.logical = (slot + self.rotation) % self.num_workers
        self._describe_worker()
        saved = self.resume.get(self.logical)
        if self.counted is None and saved is not None:
            self._own_dataset().load_state_dict(saved)
        if self.user_init is not None:
            self.user_init(self.logical)

    def _describe_worker(self) -> None:
        """``get_worker_info()`` as the saved run's worker (its id and seed), naming the
        user's dataset (torch names the one it was given: a CountedIterable)."""
        from torch.utils.data._utils import worker as torch_worker

        info = torch_worker.get_worker_info()
        if info is None:
            return
        seed = info.seed
        if self.base_seed is not None:  # a resumed epoch: torch's seeds of the saved run
            base = self.base_seed % 2**64
            seed = (base + self.logical) % 2**64
            random.seed(seed)
            torch.manual_seed(seed)
            try:
                np.random.seed(torch_worker._generate_state(base, self.logical))
            except Exception:  # another torch: still a distinct seed per worker
                np.random.seed(seed % 2**32)
        torch_worker._worker_info = torch_worker.WorkerInfo(
            id=self.logical, num_workers=info.num_workers, seed=seed, dataset=self.dataset
        )

    def _own_dataset(self) -> Any:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        return info.dataset if info is not None else self.dataset

    def take_resume(self) -> Any:
        """This worker's saved position (once: a later epoch of persistent workers starts
        afresh)."""
        return self.resume.pop(self.logical, None)

    def collate(self, data: Any) -> Tagged:
        """torch's ``collate_fn``: the user's batch, tagged (see the module doc)."""
        batch = self.user_collate(data)
        meta: dict[str, Any] = {"worker": self.logical}
        if self.counted is not None:
            self.batches += 1
            meta["items"] = self.counted.items
            if self.counted.ended:
                meta["ended"] = True
            if self.every <= 1 or self.batches % self.every == 0:
                source, state = self.counted.state()
                if source is not None:
                    meta.update(source=source, state=state, at_state=self.counted.items)
        elif self.tag_state:
            meta["state"] = self._own_dataset().state_dict()
        return Tagged(batch, meta)


# -- the consumer's side ----------------------------------------------------------------------
def note(record: EpochRecord, meta: dict) -> None:
    """What a batch handed out says of its worker's position, kept for state_dict()."""
    worker = int(meta["worker"])
    known = dict(record.workers.get(worker) or {})
    if "items" in meta:
        known["items"] = meta["items"]
        if meta.get("ended"):
            known["ended"] = True
        if "source" in meta:
            known.update(source=meta["source"], state=meta["state"], at_state=meta["at_state"])
    elif "state" in meta:
        known["state"] = meta["state"]
    record.workers[worker] = known
    record.last_worker = worker


def worker_resume(
    saved: Mapping[str, Any] | None, num_workers: int, consumed: int
) -> tuple[dict[int, Any], int]:
    """From a loaded state's per-worker part (``"iterable"`` or ``"dataset"``): what each
    worker (logical id) loads, and the rotation of worker slots (see WorkerSide)."""
    if not saved:
        return {}, 0
    workers = saved.get("workers") or {}
    resume = {int(k): v for k, v in workers.items()}
    if "next" in saved:  # an IterableDataset: the next batch is that worker's
        return resume, int(saved["next"]) % max(1, num_workers)
    return resume, consumed % max(1, num_workers)  # map-style: batch j is worker j % n's


def check_workers(saved: Mapping[str, Any] | None, num_workers: int, what: str) -> None:
    """A per-worker state resumes only with as many workers as saved it."""
    if not saved:
        return
    was = saved.get("num_workers")
    if not isinstance(was, int) or isinstance(was, bool) or was < 0:
        raise PlanStateError(
            f"loader state is corrupted: field '{what}.num_workers' should be an int >= 0, "
            f"got {was!r}"
        )
    workers = saved.get("workers")
    if workers is not None and not isinstance(workers, Mapping):
        raise PlanStateError(
            f"loader state is corrupted: field '{what}.workers' should be a mapping, got "
            f"{type(workers).__name__}"
        )
    for key, entry in (workers or {}).items():
        if not str(key).isdigit() or int(key) >= max(1, was):
            raise PlanStateError(
                f"loader state is corrupted: field '{what}.workers' names worker {key!r} of {was}"
            )
        if what == "iterable":
            items = entry.get("items") if isinstance(entry, Mapping) else None
            if not isinstance(items, int) or isinstance(items, bool) or items < 0:
                raise PlanStateError(
                    f"loader state is corrupted: field 'iterable.workers.{key}.items' should "
                    f"be an int >= 0, got {items!r}"
                )
    if was != num_workers:
        kind = "an IterableDataset" if what == "iterable" else "a dataset with state of its own"
        raise PlanStateError(
            f"loader state mismatch: it was saved with num_workers={was}, this loader has "
            f"num_workers={num_workers}. The state of {kind} is each worker's: resume it "
            "with the same num_workers"
        )


# torch says a worker died in two ways: its iterator, when it finds the worker gone ("exited
# unexpectedly"), and its SIGCHLD handler, which raises wherever the main thread is at the
# moment ("is killed by signal: Terminated."), inside next() as often as not.
_WORKER_DIED = ("exited unexpectedly", "is killed by signal")
_TIMED_OUT = "DataLoader timed out after"


def fatal(error: BaseException, step: int, record: EpochRecord | None) -> BaseException | None:
    """The error to end the iteration with if torch's iterator failed for good (a worker
    died, a timeout, the pin-memory thread gone), naming the batch awaited; None for an
    error of one batch (the iteration goes on, as torch's does)."""
    if not isinstance(error, Exception):
        return error  # KeyboardInterrupt, SystemExit
    text = str(error)
    if not isinstance(error, RuntimeError):
        return None
    indices = record.indices_of(step) if record is not None else None
    batches = {step: _listed(indices)}
    if "DataLoader worker" in text and any(said in text for said in _WORKER_DIED):
        died: BaseException = WorkerDiedError(
            f"{text} while loading {describe_batches(batches)}", batches=batches
        )
    elif text.startswith(_TIMED_OUT):
        died = LoaderTimeoutError(
            f"{text} waiting for {describe_batches(batches)}", batches=batches
        )
    elif "Pin memory thread exited unexpectedly" in text:
        return error
    else:
        return None
    return died


def _listed(indices: Any) -> Any:
    if indices is None:
        return None
    try:
        return [int(i) for i in np.asarray(indices).reshape(-1)]
    except (TypeError, ValueError):
        return None


def starting_positions(dataset: Any, *, iterable: bool, map_state: bool, workers: int) -> dict:
    """What each worker starts an epoch from when new workers start it: an IterableDataset's
    workers from its items' beginning (nothing to load: the dataset as it is here), a
    dataset with state of its own from its state here."""
    if iterable or not map_state:
        return {}
    state = dataset.state_dict()
    return {w: {"state": state} for w in range(max(1, workers))}


def carried_positions(previous: Mapping[int, Any], *, iterable: bool) -> dict:
    """What persistent workers start the next epoch from: the state each reported last (an
    IterableDataset's items start again)."""
    out = {}
    for w, known in previous.items():
        if iterable and "source" in known:
            out[w] = {"items": 0, "source": known["source"], "state": known["state"], "at_state": 0}
        elif not iterable and "state" in known:
            out[w] = {"state": known["state"]}
    return out


def worker_part(record: EpochRecord, num_workers: int, *, iterable: bool) -> dict:
    """The per-worker part of a state in torch's order (``"iterable"`` or ``"dataset"``)."""
    latest = {**record.initial, **record.workers}
    if iterable:
        entries = {}
        for w in range(max(1, num_workers)):
            known = latest.get(w) or {}
            entry = {"items": int(known.get("items", 0))}
            if known.get("ended"):
                entry["ended"] = True
            if "source" in known:
                entry.update(
                    source=known["source"], state=known["state"], at_state=known["at_state"]
                )
            entries[str(w)] = entry
        if record.last_worker is not None:
            nxt = (record.last_worker + 1) % max(1, num_workers)
        else:
            nxt = record.rotation
        return {"num_workers": num_workers, "next": nxt, "workers": entries}
    states = {str(w): known["state"] for w, known in sorted(latest.items()) if "state" in known}
    return {"num_workers": num_workers, "workers": states}
