"""The resumption check every resume test shares (as torchdata's own tests do): run an epoch
whole, then again stopping after ``k`` batches, save the state (through JSON), load it into a
loader built afresh (maybe with another worker count), and compare what it yields with what
the uninterrupted run yielded after batch ``k``; then the epoch after."""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import torch


def as_plain(batch: Any) -> Any:
    """A batch as plain lists (tensors, arrays, dicts of them), to compare."""
    if isinstance(batch, torch.Tensor):
        return batch.tolist()
    if isinstance(batch, np.ndarray):
        return batch.tolist()
    if isinstance(batch, dict):
        return {k: as_plain(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [as_plain(v) for v in batch]
    return batch


def epoch_of(loader, limit: int | None = None) -> list:
    out = []
    for k, batch in enumerate(loader):
        if limit is not None and k == limit:
            break
        out.append(as_plain(batch))
    return out


def _resumes_the_next_epoch(make, workers: int, state: dict, rng, following: list) -> None:
    loader = make(workers)
    loader.load_state_dict(state)
    torch.set_rng_state(rng)
    assert epoch_of(loader) == following, "the epoch after a state saved once it ended"
    loader.close()


def check_resume(
    make: Callable[[int], Any],
    *,
    at: int,
    workers: tuple[int, int],
    seed: Callable[[], None] = lambda: None,
    epochs_before: int = 0,
) -> None:
    """``make(num_workers)`` builds a loader (with the same dataset and arguments every
    time); ``seed()`` puts any random state the program owns back where the uninterrupted
    run had it (torch's global generator, for samplers without a generator of their own).
    The run: ``epochs_before`` whole epochs, then one stopped after ``at`` batches (``at``
    = its length: after its end; 0: before its first batch), saved, resumed."""
    seed()
    whole = make(workers[0])
    for _ in range(epochs_before):
        epoch_of(whole)
    full = epoch_of(whole)
    after_state = torch.get_rng_state()
    following = epoch_of(whole)  # the epoch after: a resume at the end must give it

    seed()
    first = make(workers[0])
    for _ in range(epochs_before):
        epoch_of(first)
    it = iter(first)
    head = [as_plain(next(it)) for _ in range(at)]
    state = json.loads(json.dumps(first.state_dict()))  # JSON-safe, and still resumable
    if at == len(full):
        # the epoch's last batch is out: a state saved once next() said it is over resumes
        # at the next epoch, and so does one saved before that next() (Lightning saves
        # then) where the loader knows the epoch's length
        assert next(it, None) is None
        ended = json.loads(json.dumps(first.state_dict()))
        assert ended["finished"] and (state["finished"] or state["consumed"] == at)
        _resumes_the_next_epoch(make, workers[1], ended, after_state, following)
    del it
    assert head == full[:at]

    torch.manual_seed(12345)  # the new process's global generator is not the old one's
    second = make(workers[1])
    second.load_state_dict(state)
    if at == len(full):
        if state.get("iterable") is not None and not state["finished"]:
            # an IterableDataset's end is known only from the next() that finds it: the
            # state saved before resumes the rest of that epoch (nothing), then the next
            assert epoch_of(second) == [], "the rest of an iterable epoch saved at its end"
        torch.set_rng_state(after_state)  # (what the program had then: its own to restore)
        assert epoch_of(second) == following, "the epoch after a state saved at an epoch's end"
    else:
        assert epoch_of(second) == full[at:], f"resumed after {at} batches"
        torch.set_rng_state(after_state)
        assert epoch_of(second) == following, "the epoch after a resumed one"
    for loader in (whole, first, second):
        loader.close()
