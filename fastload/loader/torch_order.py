"""Resuming torch's own order: ``state_dict()`` / ``load_state_dict()`` without ``seed=``.

A loader without a planned order draws its batches from torch's samplers, as torch's
DataLoader does. Its position is saved as StatefulDataLoader (torchdata) saves it, without
copying torch's iterators:

- the sampler's random state *as the epoch's first batch was drawn* (:class:`SamplerRng`):
  a sampler with ``state_dict`` / ``load_state_dict`` through them; else the torch Generator
  it draws from (``RandomSampler(generator=)``, the loader's ``generator=``); else torch's
  global generator (a ``RandomSampler`` without a generator draws its seed from it);
- the batches handed to the training loop since (never the ones prefetched).

A resumed epoch restores that state, draws the epoch's batches again and skips the ones
handed out: the indices, and so the batches, are those of the uninterrupted run, whatever
the worker count. Between epochs (before the first batch, after the last) the state is the
generators' state at that moment, and the next iteration draws its order from it.

Datasets that keep state of their own (``state_dict`` / ``load_state_dict``) and
IterableDatasets are saved per worker by the general path (general.py); this module keeps
what the consumer learnt of them (:class:`EpochRecord`) and checks a state's fields
(:func:`validate_torch_state`).
"""

from __future__ import annotations

import contextlib
import copy
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import PlanStateError
from .sampler_rng import SAMPLER_KINDS, SamplerRng, decode_state, encode_state
from .sampling import eager_batches

__all__ = [
    "ORDER",
    "IndexOrder",
    "TorchOrder",
    "EpochRecord",
    "validate_torch_state",
]

ORDER = "torch"  # the "order" of a state saved in torch's order (a planned one has none)
STATE_VERSION = 1
_MAX_INT = 2**63 - 1


@dataclass
class Progress:
    """Which of an iteration's batches (by step) the training loop has had: all before
    ``delivered``, and ``ahead`` past it (handed out of order, ``in_order=False``)."""

    delivered: int = 0
    ahead: set[int] = field(default_factory=set)

    def handed_out(self, step: int) -> None:
        if step != self.delivered:
            self.ahead.add(step)
            return
        self.delivered += 1
        while self.delivered in self.ahead:
            self.ahead.remove(self.delivered)
            self.delivered += 1


@dataclass
class Resume:
    """A loaded state, applied by the next iteration."""

    state: dict[str, Any]

    @property
    def consumed(self) -> int:
        return 0 if self.state["finished"] else int(self.state["consumed"])

    @property
    def ahead(self) -> tuple[int, ...]:
        return () if self.state["finished"] else tuple(self.state.get("ahead") or ())


@dataclass
class EpochRecord:
    """One iteration in torch's order: its start (the sampler's random state as its first
    batch was drawn, the workers' base seed) and what was handed out."""

    iteration: int
    resume: Resume | None = None
    rng: dict[str, Any] | None = None  # set at the epoch's first draw
    started: bool = False  # its first batch was drawn
    sampler_epoch: int | None = None
    base_seed: int | None = None
    generator: str | None = None  # the loader's generator right after the base seed draw
    progress: Progress = field(default_factory=Progress)
    finished: bool = False
    skip: int = 0  # steps of the epoch handed out before the resume
    ahead: tuple[int, ...] = ()  # and past it (in_order=False), counted from ``skip``
    drawn: deque = field(default_factory=deque)  # (step, indices) drawn, not yet handed out
    #: per worker (logical id): what general.py learnt of it from its last batch handed out
    workers: dict[int, Any] = field(default_factory=dict)
    last_worker: int | None = None
    initial: dict[int, Any] = field(default_factory=dict)  # what each worker started from
    rotation: int = 0  # the worker whose batch came first (a resumed IterableDataset's)
    #: the loader's generator (torch's global one without) to put back at the first draw:
    #: new workers drew a base seed from it that the saved run's persistent ones did not
    rewind: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.resume is not None:
            self.skip, self.ahead = self.resume.consumed, self.resume.ahead
        self.progress = Progress(self.skip)
        for k in self.ahead:
            self.progress.handed_out(self.skip + k)

    def epoch_step(self, j: int) -> int:
        """The epoch's step of the iteration's j-th batch (the resumed part skips those
        handed out before)."""
        step = self.skip + j
        for k in self.ahead:  # a few: at most the batches in flight when it was saved
            if self.skip + k > step:
                break
            step += 1
        return step

    def handed_out(self, step: int) -> None:
        self.progress.handed_out(step)
        while self.drawn and self.drawn[0][0] < self.progress.delivered:
            self.drawn.popleft()

    def indices_of(self, step: int) -> Any:
        for s, indices in self.drawn:
            if s == step:
                return indices
        return None


class IndexOrder:
    """The loader's index sampler (torch's: the batch sampler, or the sampler itself
    without automatic batching) as every iteration draws from it: the sampler's random state
    captured before the epoch's first draw, and a loaded position replayed (the epoch's
    batches drawn again from the saved state, the ones handed out skipped). What torch's
    iterators and the fast path iterate in torch's order."""

    def __init__(self, order: TorchOrder, inner: Any) -> None:
        self.order = order
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        return self.batches(eager=False)

    def batches(self, eager: bool) -> Iterator[Any]:
        """The epoch's batches (lazily: nothing is drawn before the first is asked for).
        ``eager``: torch's plain samplers drawn in one go (sampling.eager_batches)."""
        record = self.order.current
        if record is None or self.order.iterable:  # nothing to save of it: plainly
            yield from self.inner
            return
        rng = self.order.rng
        resume = record.resume
        saved = resume.state["sampler"] if resume is not None else None
        mid_epoch = resume is not None and not resume.state["finished"] and saved is not None
        restore = (
            rng.restored(saved) if mid_epoch and saved is not None else contextlib.nullcontext()
        )
        skip, ahead = record.skip, set(record.ahead)
        if resume is not None or record.rewind is not None:
            self.order.settle()  # (torch's iterator may have drawn its base seed meanwhile)
        with restore:
            record.rng = saved if mid_epoch else rng.capture()
            record.sampler_epoch = rng.sampler_epoch()
            record.started = True
            batches = eager_batches(self.inner) if eager else iter(self.inner)
            first = []
            for _ in range(skip):  # handed out before: drawn again, not loaded
                if next(batches, _END) is _END:
                    return
            # (torch's samplers draw at their first batch: within the restored state)
            first = [b for b in [next(batches, _END)] if b is not _END]
        step = skip
        for batch in _chain(first, batches):
            if step - skip not in ahead:
                record.drawn.append((step, batch))
                yield batch
            step += 1


_END = object()


def _chain(first: list, rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest


class TorchOrder:
    """Where a loader in torch's order stands, and its state (see the module doc).
    ``iterable``: the dataset is an IterableDataset (its position is its workers')."""

    def __init__(self, index_sampler: Any, *, iterable: bool) -> None:
        self.index = IndexOrder(self, index_sampler)
        self.rng = SamplerRng(index_sampler)
        self.iterable = iterable
        self.current: EpochRecord | None = None
        self.pending: Resume | None = None
        self.iterations = 0
        self.generator: torch.Generator | None = None  # the loader's, of the last iteration

    def begin(self, generator: torch.Generator | None, draw_seed: bool = True) -> EpochRecord:
        """A new iteration's record (taking a loaded state). Its base seed is drawn from
        ``generator`` as torch's iterator draws it (``draw_seed``; persistent workers keep
        the first), or, when resuming mid-epoch, the saved one."""
        resume, self.pending = self.pending, None
        self.generator = generator
        if resume is not None and self._handed_all(resume.state):
            resume = self._replayed(resume, generator)
        if resume is not None and resume.state["finished"] and self.rng.kind == "global":
            resume = _from_global(resume, generator)
        record = EpochRecord(self.iterations, resume)
        self.iterations += 1
        state = resume.state if resume is not None else None
        saved_generator = (
            (state.get("generator") or state.get("generator_before")) if state else None
        )
        if saved_generator and generator is not None:
            generator.set_state(decode_state(saved_generator, "generator"))
        if state is not None and state["finished"] and state["sampler"] is not None:
            # between epochs: the sampler's own state (or generator) as it was then
            with self.rng.restored(state["sampler"]):
                pass
        mid_epoch = state is not None and not state["finished"]
        if mid_epoch and state is not None and state.get("base_seed") is not None:
            record.base_seed = int(state["base_seed"])
        elif draw_seed:
            record.base_seed = int(
                torch.empty((), dtype=torch.int64).random_(generator=generator).item()
            )
        if generator is not None:
            record.generator = encode_state(generator.get_state())
        self.current = record
        return record

    def _handed_all(self, state: Mapping[str, Any]) -> bool:
        """A state saved once the epoch's last batch was out, before the next() that ends
        the iteration (Lightning saves then)."""
        length = _length(self.index.inner)
        return (
            not state["finished"]
            and not self.iterable
            and state["sampler"] is not None
            and length is not None
            and state["consumed"] >= length
        )

    def _replayed(self, resume: Resume, generator: torch.Generator | None) -> Resume:
        """That state as the state between that epoch and the next: the epoch's draws made
        again, to its end (a sampler draws more as it ends: torch's RandomSampler does), so
        the next epoch draws as the saved run's did."""
        state = dict(resume.state)
        if state.get("generator") and generator is not None:
            generator.set_state(decode_state(state["generator"], "generator"))
        with self.rng.restored(state["sampler"]):
            for _ in self.index.inner:
                pass
            end = self.rng.capture()
        state.update(
            finished=True,
            consumed=0,
            sampler=end,
            base_seed=None,
            generator=encode_state(generator.get_state()) if generator is not None else None,
        )
        state.pop("ahead", None)
        part = state.get("dataset")
        if part is not None and "workers" in part and state.get("seed_draw") is not False:
            # the next epoch's workers start from the main process's copy of the dataset,
            # not from where this epoch's workers ended (persistent workers go on from it)
            state["dataset"] = {"num_workers": part["num_workers"]}
        return Resume(state)

    def settle(self) -> None:
        """At a resumed epoch's first draw (torch's iterator drew its base seed from the
        loader's generator before it): that generator as it was after that draw in the
        saved run; or, for a state saved between epochs by persistent workers (the next
        epoch draws no base seed: they keep theirs), as it was saved."""
        record, generator = self.current, self.generator
        if record is not None and record.rewind is not None:
            if generator is None:
                torch.set_rng_state(record.rewind)
            else:
                generator.set_state(record.rewind)
            return
        resume = record.resume if record is not None else None
        if resume is None or generator is None or not resume.state.get("generator"):
            return
        state = resume.state
        if not state["finished"] or state.get("seed_draw") is False:
            generator.set_state(decode_state(state["generator"], "generator"))

    # -- state ------------------------------------------------------------------------------
    def state_dict(
        self, generator: torch.Generator | None, seed_draw: bool = True
    ) -> dict[str, Any]:
        """The position (the module doc), JSON-safe where the sampler's and datasets' own
        states are. ``seed_draw``: whether the next iteration draws its workers' base seed
        (persistent workers keep theirs)."""
        if self.pending is not None:
            return copy.deepcopy(self.pending.state)
        record = self.current
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "order": ORDER,
            "iteration": self.iterations,
            "batches": _length(self.index.inner),
        }
        if record is None or record.finished or not (record.started or self.iterable):
            # between iterations (or one not started): the next draws from the state now
            state.update(
                consumed=0,
                finished=True,  # (or not begun: the next iteration starts afresh either way)
                sampler=self.rng.capture(),
                sampler_epoch=self.rng.sampler_epoch(),
                base_seed=None,
                generator=encode_state(generator.get_state()) if generator is not None else None,
                seed_draw=seed_draw,
            )
            return state
        progress = record.progress
        state.update(
            consumed=progress.delivered,
            finished=False,
            sampler=record.rng,
            sampler_epoch=record.sampler_epoch,
            base_seed=record.base_seed,
            generator=record.generator,
            seed_draw=seed_draw,  # (for the next epoch, should this state be at its end)
        )
        if progress.ahead:
            state["ahead"] = sorted(s - progress.delivered for s in progress.ahead)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = validate_torch_state(state)
        if state["sampler"] is not None:
            self.rng.check(state["sampler"])
        batches = _length(self.index.inner)
        if not self.iterable and batches is not None and state["consumed"] > batches:
            raise PlanStateError(
                f"loader state mismatch: 'consumed' = {state['consumed']} batches, but this "
                f"loader's epoch has {batches}: load a state saved by a loader over the same "
                "dataset, sampler and batch size"
            )
        if self.rng.epochs is not None and state.get("sampler_epoch") is not None:
            self.rng.epochs.set_epoch(state["sampler_epoch"])
        self.pending = Resume(dict(state))
        self.current = None


def _from_global(resume: Resume, generator: torch.Generator | None) -> Resume:
    """A state saved between iterations, for a sampler that draws from torch's global
    generator, as the state of the next iteration before its first batch: the draws it makes
    from the saved state (its base seed first, where it draws it from that generator), made
    in a fork of the generator (the program's own is left alone)."""
    state = dict(resume.state)
    saved = decode_state(state["sampler"]["state"], "sampler")
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(saved)
        seed = None
        if generator is None and state.get("seed_draw", True):
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        first_draw = encode_state(torch.get_rng_state())
    state.update(
        finished=False,
        consumed=0,
        sampler={"kind": "global", "state": first_draw},
        base_seed=seed,
        generator=None,  # (the loader's generator as it was before the iteration drew)
        generator_before=state.get("generator"),
    )
    return Resume(state)


def _length(sampler: Any) -> int | None:
    try:
        return len(sampler)
    except TypeError:
        return None


_FIELDS: dict[str, tuple[type, ...]] = {
    "version": (int,),
    "order": (str,),
    "iteration": (int,),
    "consumed": (int,),
    "finished": (bool,),
}
_OPTIONAL: dict[str, tuple[type, ...]] = {
    "batches": (int,),
    "seed_draw": (bool,),
    "sampler_epoch": (int,),
    "base_seed": (int,),
    "generator": (str,),
    "num_workers": (int,),
    "ahead": (list,),
    "sampler": (dict,),
    "dataset": (dict,),
    "iterable": (dict,),
    "bad_samples": (dict,),
}


def validate_torch_state(state: Any) -> dict[str, Any]:
    """``state`` if it is a well-formed state of torch's order, field by field; else
    PlanStateError naming the field."""
    if not isinstance(state, Mapping):
        raise PlanStateError(f"loader state must be a mapping, got {type(state).__name__}")
    for key, kinds in {**_FIELDS, **_OPTIONAL}.items():
        value = state.get(key)
        if value is None and key in _OPTIONAL:
            continue
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if not ok:
            want = " or ".join(k.__name__ for k in kinds)
            raise PlanStateError(
                f"loader state is corrupted: field {key!r} should be {want}, got {value!r}"
            )
    if state["version"] != STATE_VERSION:
        raise PlanStateError(
            f"loader state version {state['version']} is not supported (this fastload reads "
            f"version {STATE_VERSION})"
        )
    if state["order"] != ORDER:
        raise PlanStateError(f"loader state is corrupted: field 'order' = {state['order']!r}")
    for key in ("iteration", "consumed", "batches", "sampler_epoch", "num_workers"):
        value = state.get(key)
        if value is not None and not 0 <= value <= _MAX_INT:
            raise PlanStateError(
                f"loader state is corrupted: field {key!r} = {value} is out of range"
            )
    seed = state.get("base_seed")
    if seed is not None and not -(2**63) <= seed < 2**64:
        raise PlanStateError(f"loader state is corrupted: field 'base_seed' = {seed}")
    ahead = state.get("ahead") or []
    if not all(isinstance(k, int) and not isinstance(k, bool) and 0 < k <= _MAX_INT for k in ahead):
        raise PlanStateError(
            f"loader state is corrupted: field 'ahead' should be a list of positive ints, "
            f"got {ahead!r}"
        )
    sampler = state.get("sampler")
    if sampler is not None and (sampler.get("kind") not in SAMPLER_KINDS or "state" not in sampler):
        raise PlanStateError(
            f"loader state is corrupted: field 'sampler' should be a saved sampler state "
            f"(kind one of {sorted(SAMPLER_KINDS)}), got {_short(sampler)}"
        )
    if state.get("generator") is not None:
        decode_state(state["generator"], "generator")
    return dict(state)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
