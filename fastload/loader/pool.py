"""Worker processes (or threads) of the loader, and the consumer's side of talking to them.

The consumer sends tasks to one queue per worker (batch j goes to worker j % num_workers, as in
torch) and reads results from one shared queue. While it waits it checks, every poll interval,
that no worker died: a worker killed by a signal is reported in about a second, never a hang.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import multiprocessing.connection as mpc
import os
import select
import signal
import threading
import time
import weakref
from typing import Any

import torch.multiprocessing as tmp

from ..errors import LoaderTimeoutError, WorkerDiedError
from ..read.contract import Readable
from .messages import BatchResult, BatchTask, decode, encode_tasks
from .slabs import SlabMap, SlabPool, out_of_descriptors
from .worker import POLL_SECONDS, WorkerSetup, short_indices, worker_loop

__all__ = ["WorkerPool", "Interrupted", "describe_batches"]


_POLL = 0.5


class Interrupted(Exception):
    """:meth:`WorkerPool.get` was interrupted from another thread (:meth:`WorkerPool.interrupt`):
    the thread that reads the batches is being stopped."""


class WorkerPool:
    def __init__(
        self, setup: WorkerSetup, slabs: SlabPool, *, worker_type: str, context: Any = None
    ) -> None:
        self.num_workers = setup.num_workers
        self.is_process = worker_type == "process"
        if setup.layout.decode:
            # Imports and first-call costs of image decoding, paid once here: forked workers
            # (and threads) start warm, so the first batch is not ~0.3 s late.
            from ..decode import warm_up

            warm_up()
        self.slabs_known = [set(range(len(slabs))) for _ in range(self.num_workers)]
        self.arenas_known = [set(range(len(slabs.arenas))) for _ in range(self.num_workers)]
        # One duplex pipe per worker: tasks go down, results come back. Pipes (not Queues):
        # no feeder threads, and the consumer can wait on all of them and on the workers'
        # exit sentinels at once, so a dead worker is noticed the moment it dies.
        ctx = _context(context) if self.is_process else None
        start_method = ctx.get_start_method() if ctx is not None else None
        if start_method == "fork":
            _prepare_workers(setup.dataset)
        pipes = [mpc.Pipe(duplex=True) for _ in range(self.num_workers)]
        self.conns = [mine for mine, _ in pipes]
        self.workers = self._make_workers(setup, slabs, ctx, pipes)
        try:
            with _no_collection_in_forked_children(start_method):
                for w in self.workers:
                    w.start()
        except BaseException as e:
            # Those started get EOF on their pipe and exit; none is left waiting.
            for c in (c for pair in pipes for c in pair):
                c.close()
            for w in self.workers:
                if w.ident is not None:
                    w.join(5)
            if isinstance(e, OSError) and e.errno == errno.EMFILE:
                raise OSError(
                    errno.EMFILE, out_of_descriptors("start its workers", limit=True)
                ) from e
            raise
        if self.is_process:
            for _, theirs in pipes:
                theirs.close()  # the workers hold their ends; EOF then means a worker is gone
        self._by_conn = {c: i for i, c in enumerate(self.conns)}
        self._conn_of_fd = {c.fileno(): c for c in self.conns}
        self._poller = select.poll()
        for fd in [*self._conn_of_fd, *(w.sentinel for w in self.workers if self.is_process)]:
            self._poller.register(fd, select.POLLIN)
        # Another thread wakes get() through this pipe (interrupt()): the thread that reads
        # the batches ahead of the consumer (ahead.py) is stopped without waiting for a result.
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)
        self._poller.register(self._wake_r, select.POLLIN)
        self._interrupted = False
        self.closed = False
        self.seed = setup.seed
        #: The consumer's bookkeeping, kept here so that it outlives one epoch (persistent
        #: workers): messages in flight per worker, slabs out with the workers, and whether
        #: the pool is broken (a worker died, hung or failed to start) and must not be reused.
        self.pending = [0] * self.num_workers
        #: The batches each worker was sent and has not answered (batch -> dataset indices),
        #: named when it dies or goes silent.
        self.loading: list[dict[int, Any]] = [{} for _ in range(self.num_workers)]
        self.out: set[int] = set()
        self._shares_out: dict[int, int] = {}  # slab -> shares still out, when several
        self.broken = False

    def _make_workers(self, setup: WorkerSetup, slabs: SlabPool, ctx: Any, pipes: list) -> list:
        """The worker processes (or threads), not started yet, each serving its pipe."""
        if self.is_process:
            slab_map = SlabMap(list(slabs.arenas), slabs.places, slabs.slab_size)
            # A forked worker inherits every end of every pipe; it closes all but its own, or
            # the consumer's end of its pipe would outlive the consumer (no EOF when the main
            # process dies, and a send to it could block forever: an orphan).
            forked = ctx.get_start_method() == "fork"
            return [
                ctx.Process(
                    target=worker_loop,
                    name=f"fastload-worker-{i}",
                    daemon=True,
                    args=(
                        setup,
                        i,
                        slab_map,
                        theirs,
                        theirs,
                        True,
                        [c for pair in pipes for c in pair if c is not theirs] if forked else [],
                    ),
                )
                for i, (_, theirs) in enumerate(pipes)
            ]
        return [
            threading.Thread(
                target=worker_loop,
                name=f"fastload-worker-{i}",
                daemon=True,
                args=(setup, i, OwnSlabs(slabs), theirs, theirs, False),
            )
            for i, (_, theirs) in enumerate(pipes)
        ]

    def submit(self, worker: int, tasks: list[BatchTask], slabs: SlabPool) -> None:
        """Send ``tasks`` in one message; a slab the worker has not seen travels with its
        task (once, with its arena). Its slabs are out with the workers until
        :meth:`returned` says they are back."""
        for task in tasks:
            self.out.add(task.slab)
            self.loading[worker][task.batch] = task.indices
            if task.parts > 1 and task.part == 0:  # its shares are submitted one after another
                self._shares_out[task.slab] = task.parts
            if self.is_process and task.slab not in self.slabs_known[worker]:
                arena, offset = slabs.places[task.slab]
                tensor = None
                if arena not in self.arenas_known[worker]:  # each arena travels once
                    tensor = slabs.arenas[arena]  # pickled as a handle to its shared memory
                    self.arenas_known[worker].add(arena)
                task.new_slab = (tensor, (arena, offset))
                self.slabs_known[worker].add(task.slab)
        try:
            self.conns[worker].send_bytes(encode_tasks(tasks))
        except OSError:
            pass  # the worker is gone: get() says how, after any message it left behind

    def returned(self, slab: int, worker: int = -1, batch: int = -1) -> bool:
        """A result for ``slab`` (batch ``batch``) came back from ``worker``: whether the slab
        is now back from every worker (the last share of a batch filled by several)."""
        if worker >= 0:
            self.loading[worker].pop(batch, None)
        left = self._shares_out.pop(slab, 1) - 1
        if left > 0:
            self._shares_out[slab] = left
            return False
        self.out.discard(slab)
        return True

    def forget_out(self) -> set[int]:
        """The slabs that were out (every worker has stopped: they are free again)."""
        out, self.out = self.out, set()
        self._shares_out.clear()
        for loading in self.loading:
            loading.clear()
        return out

    def get(self, timeout: float, awaited: int | None = None) -> tuple[int, list[BatchResult]]:
        """``(worker, the results of one message)`` from any worker. Raises WorkerDiedError if
        a worker died, LoaderTimeoutError after ``timeout`` seconds without a result (0: wait
        forever); both name the batches concerned (``awaited``: the one the consumer waits
        for) and their dataset indices."""
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while True:
            if self._interrupted:
                self._interrupted = False
                raise Interrupted
            wait = _POLL if deadline is None else max(0.0, min(_POLL, deadline - time.monotonic()))
            # One poll object for the pool's life (mpc.wait builds a selector per call: ~15 us,
            # a good part of the consumer's time per small batch).
            for fd, _ in self._poller.poll(wait * 1000):
                if fd == self._wake_r:
                    self._drain_wake()
                    continue
                conn = self._conn_of_fd.get(fd)
                if conn is not None:
                    try:
                        return self._by_conn[conn], decode(conn.recv_bytes())
                    except (EOFError, OSError):
                        pass  # the worker is gone: check_alive says how
            try:
                self.check_alive()
            except WorkerDiedError:
                # What a worker sent before it went (worker_init_fn's error) comes first.
                waiting = mpc.wait(self.conns, 0)
                for conn in (c for c in self.conns if c in waiting):
                    try:
                        return self._by_conn[conn], decode(conn.recv_bytes())
                    except (EOFError, OSError):
                        pass
                raise
            if deadline is not None and time.monotonic() >= deadline:
                self.broken = True
                raise self._timed_out(timeout, awaited)

    def interrupt(self) -> None:
        """Have :meth:`get`, running (or next called) in another thread, raise
        :class:`Interrupted` at once."""
        self._interrupted = True
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # full (a wake-up is pending already) or closed (the pool is gone)

    def clear_interrupt(self) -> None:
        """Forget an interrupt that :meth:`get` did not see (its thread stopped elsewhere)."""
        self._interrupted = False
        self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass  # empty

    def _timed_out(self, timeout: float, awaited: int | None) -> LoaderTimeoutError:
        held = [i for i, loading in enumerate(self.loading) if awaited in loading]
        batches = {awaited: self._indices_of(awaited)} if awaited is not None else {}
        whose = ""
        if held:
            who = self.workers[held[0]]
            pid = f" (pid {who.pid})" if self.is_process else ""
            whose = f" from fastload worker {held[0]}{pid}"
        what = f" {describe_batches(batches)}" if batches else " a batch"
        return LoaderTimeoutError(
            f"DataLoader timed out after {timeout} seconds waiting for{what}{whose}",
            batches=batches,
        )

    def _indices_of(self, batch: int | None) -> Any:
        for loading in self.loading:
            if batch in loading:
                return loading[batch]
        return None

    def check_alive(self) -> None:
        if not self.is_process:
            dead = [i for i, w in enumerate(self.workers) if not w.is_alive()]
            if dead:
                self.broken = True
                batches = dict(self.loading[dead[0]])
                raise WorkerDiedError(
                    f"fastload worker thread {dead[0]} exited unexpectedly{_while(batches)}",
                    batches=batches,
                )
            return
        for i, w in enumerate(self.workers):
            code = w.exitcode
            if code is not None:
                self.broken = True
                how = (
                    f"was killed by signal {-code} ({signal.Signals(-code).name})"
                    if code < 0
                    else f"exited with status {code}"
                )
                hint = " (out of memory?)" if code == -signal.SIGKILL else ""
                batches = dict(self.loading[i])
                raise WorkerDiedError(
                    f"fastload worker {i} (pid {w.pid}) {how} unexpectedly{hint}{_while(batches)}",
                    batches=batches,
                )

    def shutdown(self) -> bool:
        """Stop every worker and reap it; safe to call twice. Returns whether every worker
        has stopped (a thread stuck in a read cannot be stopped)."""
        if self.closed:
            return not any(w.is_alive() for w in self.workers)
        self.closed = True
        for c in self.conns:
            try:
                c.send(None)
            except (OSError, ValueError):
                pass  # that worker is already gone
        # A broken pool (a worker hung, died or failed to start) gets no grace period.
        deadline = time.monotonic() + (0 if self.broken else 2 * POLL_SECONDS + 1)
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        if self.is_process:
            for w in self.workers:
                if w.is_alive():
                    w.terminate()
                    w.join(1.0)
                if w.is_alive():
                    w.kill()
                    w.join()
        for c in self.conns:
            c.close()
        return not any(w.is_alive() for w in self.workers)


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def describe_batches(batches: dict[int, Any]) -> str:
    """``batch 3 (dataset indices [6, 7])``, for a few batches."""
    shown = [
        f"batch {b} (dataset indices {short_indices(i)})" if i is not None else f"batch {b}"
        for b, i in sorted(batches.items())[:4]
    ]
    more = f" and {len(batches) - 4} more" if len(batches) > 4 else ""
    return ", ".join(shown) + more


def _while(batches: dict[int, Any]) -> str:
    return f" while loading {describe_batches(batches)}" if batches else ""


def _prepare_workers(dataset: Readable) -> None:
    """Forked workers start with what this process has opened: remote datasets open their
    shards and map what the block cache holds first (``Readable.prepare_workers``)."""
    try:
        dataset.prepare_workers()
    except Exception:
        pass  # only a head start: each worker opens what it needs, and says why not


class OwnSlabs:
    """A thread worker's slabs: the pool's own arrays (one process: nothing to send). A
    slab grown later is in them before any task names it."""

    def __init__(self, pool: SlabPool) -> None:
        self._arrays = pool.arrays

    def add(self, slab: int, arena, place: tuple[int, int]) -> None:
        pass  # (process workers learn grown slabs from their tasks)

    def __getitem__(self, slab: int):
        return self._arrays[slab]


@contextlib.contextmanager
def _no_collection_in_forked_children(start_method: Any):
    """Forked workers must never collect this process's garbage: its finalizers would run in
    a child that has none of this process's threads (a DALI pipeline left in a reference
    cycle by an earlier loader joins its threads when collected: a worker died of SIGSEGV).
    Frozen before the fork, the objects there are permanent in the children; this process
    takes its own back at once."""
    if start_method != "fork":
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _context(context: Any):
    """torch's multiprocessing context (it shares tensors by file descriptor)."""
    if context is None:
        return tmp.get_context()
    if isinstance(context, str):
        return tmp.get_context(context)
    return context
