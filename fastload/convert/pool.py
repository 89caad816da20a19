"""Running convert tasks on worker processes.

Failure semantics (if the code disagrees with this comment, the code is wrong):

- The first task that fails stops the convert: every worker is terminated and the task's
  error is raised in the caller, with the worker's traceback attached as a note.
- A worker that dies without reporting (killed, out of memory, a crash in native code) is
  noticed within a second and raised as a ConvertError naming the task it was running.
- Ctrl-C (KeyboardInterrupt) or SIGTERM (which the runner turns into SystemExit) in the main
  process terminates every worker before the exception propagates; workers ignore SIGINT so
  that only the main process decides.
- A worker whose main process died exits at its next progress report.
- Tasks are handed out largest first to balance the load; that changes only which worker
  writes a part, never the output.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import time
from collections.abc import Sequence
from typing import Any, Callable

from ..errors import ConvertError
from ..format.schema import Schema
from .base import Source, Task
from .worker import TaskResult, WriteOptions, error_from_payload, worker_main

__all__ = ["run_in_processes"]

_POLL_SECONDS = 0.5
_JOIN_SECONDS = 5.0


def run_in_processes(
    source: Source,
    schema: Schema,
    tasks: Sequence[Task],
    opts: WriteOptions,
    skip_bad: bool,
    workers: int,
    on_event: Callable[[str, Any], None],
) -> list[TaskResult]:
    """Run every task on ``workers`` processes; results in task order (see module docstring)."""
    ctx = _context()
    jobs, events = ctx.Queue(), ctx.Queue()
    for i in sorted(range(len(tasks)), key=lambda i: -tasks[i].input_bytes):
        jobs.put((i, tasks[i]))
    for _ in range(workers):
        jobs.put(None)
    current = ctx.Array("q", [-1] * workers, lock=False)  # the task each worker is running
    procs = [
        ctx.Process(
            target=worker_main,
            name=f"fastload-convert-{k}",
            daemon=True,
            args=(source, schema, opts, skip_bad, jobs, events, current, k),
        )
        for k in range(workers)
    ]
    results: dict[int, TaskResult] = {}
    finished = False
    try:
        for p in procs:
            p.start()
        next_check = time.monotonic() + _POLL_SECONDS
        while len(results) < len(tasks):
            try:
                event: tuple[str, Any] | None = events.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                event = None
            if event is None or time.monotonic() >= next_check:
                _check_workers(procs, current, tasks, idle=event is None)
                next_check = time.monotonic() + _POLL_SECONDS
            if event is None:
                continue
            kind, value = event
            if kind == "done":
                results[value.index] = value
                on_event(kind, value)
            elif kind == "error":
                raise error_from_payload(value[1])
            else:
                on_event(kind, value)
        finished = True
    finally:
        _stop(procs, wait=finished)
        jobs.cancel_join_thread()
        for q in (jobs, events):
            q.close()
    return [results[i] for i in range(len(tasks))]


def _context():
    # forkserver: workers start from a clean process, not a fork of one that may hold locks
    # of threads (tqdm's monitor, Arrow's pools); spawn where forkserver does not exist.
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # Imported once in the fork server, so each worker starts without re-importing fastload.
    ctx.set_forkserver_preload(["fastload.convert.worker"])
    return ctx


def _check_workers(procs, current, tasks: Sequence[Task], *, idle: bool) -> None:
    """Raise if a worker died without reporting, or if (with no events left to read: ``idle``)
    every worker is gone with work left."""
    for k, p in enumerate(procs):
        if p.exitcode not in (None, 0):
            raise ConvertError(_death_message(p, current[k] if current[k] >= 0 else None, tasks))
    if idle and all(p.exitcode is not None for p in procs):
        raise ConvertError("every convert worker exited before all tasks were done")


def _death_message(p, index: int | None, tasks: Sequence[Task]) -> str:
    how = (
        f"was killed by signal {-p.exitcode}"
        if p.exitcode < 0
        else f"exited with status {p.exitcode}"
    )
    if index is not None:
        hint = " (out of memory?)" if p.exitcode == -signal.SIGKILL else ""
        return f"convert worker {p.pid} {how} while converting {tasks[index].describe()}{hint}"
    return (
        f"convert worker {p.pid} {how} before starting any task (see its error above). "
        "Worker processes re-import the main module: a script that calls convert() with "
        "workers > 1 needs an `if __name__ == '__main__':` guard, and code fed on stdin "
        "cannot start workers"
    )


def _stop(procs, *, wait: bool) -> None:
    """Reap every worker: after a success they are exiting on their own (``wait``), after a
    failure they are terminated at once."""
    started = [p for p in procs if p.pid is not None]
    for p in started:
        if wait:
            p.join(_JOIN_SECONDS)
        if p.is_alive():
            p.terminate()
    for p in started:
        p.join(_JOIN_SECONDS)
        if p.is_alive():
            p.kill()
            p.join()
