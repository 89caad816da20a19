"""An epoch's batches received while the consumer is away: during its training step.

Receiving a batch from the workers (a pipe read, its message decoded, tensors made over its
slab) costs the training process ~20-50 us, inside ``next()``. A training step waiting on its
GPU leaves the process's CPU thread idle, so with batches of token rows and a 1 ms step that
work is 3-5% of the step spent waiting on the loader. Here, once the consumer is seen to stay
away between its ``next()`` calls (:data:`AWAY_SECONDS`, averaged), a thread receives the next
batches while it is away (taking the GIL only while the step leaves it: a wait on the GPU, a
sleep, I/O), and ``next()`` takes a batch that is ready. A consumer that comes straight back
(a loop that only loads) gets its batches received in ``next()`` itself, as before: handing
each batch from thread to thread costs more CPU than it saves there, and on a machine whose
cores the workers use, that CPU is the workers'.

What the iteration's semantics need of it:

- One thread at a time advances the epoch's iterator, so order and errors are kept: items (a
  batch, or ``Failed``) come out in the order the epoch made them, and an exception that ended
  the epoch is raised by the ``next()`` that would have returned the next item.
- :meth:`Ahead.close` stops the thread before anything else touches the workers: it wakes it
  wherever it waits (``WorkerPool.interrupt`` for a wait on the workers), joins it, drops the
  batches it had readied (their slabs go back to the pool) and closes the epoch's iterator.
- It holds at most ``depth`` readied batches, each in a slab of its own: the loader keeps that
  many more slabs (:func:`extra_slabs`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .pool import Interrupted

__all__ = ["Ahead", "AWAY_SECONDS", "DEPTH", "extra_slabs"]

DEPTH = 2  # batches readied ahead: one for the step in flight, one to absorb a late message
AWAY_SECONDS = 1e-4  # a consumer away this long between batches (on average) has a step
_SMOOTHING = 0.25  # weight of the latest time away in the average
_JOIN_SECONDS = 10.0  # a thread not back by then is left (a daemon) rather than hang close()

_ITEM, _END, _ERROR = 0, 1, 2


def extra_slabs(thread: bool) -> int:
    """The slabs an epoch read ahead holds beyond the consumer's own: the readied batches and
    the one the thread has in hand."""
    return DEPTH + 1 if thread else 0


class Ahead:
    """``batches`` (an epoch's ``(j, item)`` iterator), received while the consumer is away
    (see the module doc), at most ``depth`` items ahead. ``interrupt`` wakes the thread from
    a wait on the workers (:meth:`fastload.loader.pool.WorkerPool.interrupt`);
    ``clear_interrupt`` forgets one it did not see."""

    def __init__(
        self,
        batches: Iterator[tuple[int, Any]],
        interrupt: Callable[[], None],
        clear_interrupt: Callable[[], None],
        depth: int = DEPTH,
    ) -> None:
        self._batches = batches
        self._interrupt, self._clear_interrupt = interrupt, clear_interrupt
        self._box = _Box(depth)
        self._thread: threading.Thread | None = None  # started the first time it is needed
        self._away = 0.0  # the consumer's average time away between batches, seconds
        self._left: float | None = None  # when the last next() returned
        self._closed = False

    @property
    def reading_ahead(self) -> bool:
        """Whether the thread receives the batches now (the consumer has a step)."""
        return self._away >= AWAY_SECONDS

    def __iter__(self) -> Ahead:
        return self

    def __next__(self) -> tuple[int, Any]:
        if self._left is not None:
            away = time.perf_counter() - self._left
            self._away += _SMOOTHING * (away - self._away)
        ahead = self.reading_ahead
        if ahead and self._thread is None:
            self._start()
        box = self._box
        taken: tuple[int, Any] | None = None
        with box.lock:
            box.away = False
            while not box.items and box.producing:
                box.changed.wait(0.5)
                if box.producing and not self._thread_alive():
                    raise RuntimeError("fastload's batch thread ended without a word")
            if box.items:
                taken = box.items.popleft()
                if taken[0] == _ITEM and ahead:
                    self._send_away()  # (the thread takes the GIL once this thread waits)
        if taken is None:
            item = next(self._batches)  # nothing was readied: here (StopIteration ends it)
            if ahead:
                with box.lock:
                    self._send_away()
        else:
            kind, value = taken
            if kind == _END:
                raise StopIteration
            if kind == _ERROR:
                raise value
            item = value
        self._left = time.perf_counter()
        return item

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=_read_while_away,
            args=(self._batches, self._box),
            name="fastload-batches",
            daemon=True,  # (close() stops it; at exit it must not hold the process)
        )
        self._thread.start()

    def _send_away(self) -> None:
        """The consumer leaves for its step: the thread may receive the next batches (the
        box's lock held)."""
        self._box.away = True
        self._box.changed.notify()  # the thread: the consumer is not waiting

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the thread and close the epoch's iterator (see the module doc); safe to call
        twice."""
        if self._closed:
            return
        self._closed = True
        box = self._box
        with box.lock:
            box.stop = True
            box.items.clear()  # readied batches: their slabs go back as they are dropped
            box.changed.notify_all()
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._interrupt()
            thread.join(_JOIN_SECONDS)
            if thread.is_alive():
                return  # stuck beyond an interrupt: the iterator is its (the workers close)
        self._clear_interrupt()  # (the thread appends nothing once it sees stop)
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


class _Box:
    """What the thread and the consumer share, under one lock."""

    def __init__(self, depth: int) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.items: deque[tuple[int, Any]] = deque()
        self.depth = depth
        self.away = False  # the consumer is in its step: the thread may receive batches
        self.producing = False  # the thread is advancing the iterator
        self.stop = False


def _read_while_away(batches: Iterator[tuple[int, Any]], box: _Box) -> None:
    """The thread: while the consumer is away and fewer than ``depth`` batches are ready,
    receive the next one. It holds the box and the iterator, never the Ahead: an iterator the
    user drops is collected, and its close() stops this."""
    while True:
        with box.lock:
            while not box.stop and not (box.away and len(box.items) < box.depth):
                box.changed.wait()
            if box.stop:
                return
            box.producing = True
        done: tuple[int, Any] | None = None
        try:
            done = (_ITEM, next(batches))
        except StopIteration:
            done = (_END, None)
        except Interrupted:
            done = None  # being stopped
        except BaseException as e:  # ends the epoch: raised by the consumer's next()
            done = (_ERROR, e)
        with box.lock:
            box.producing = False
            if done is not None and not box.stop:
                box.items.append(done)
            box.changed.notify_all()
            if done is None or done[0] != _ITEM:
                return
        del done
