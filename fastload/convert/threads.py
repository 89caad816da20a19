"""Running convert tasks on threads, for sources whose work releases the GIL (tokens).

Same contract as :mod:`.pool` for the caller: results in task order, the first failure stops
the convert and is raised here, Ctrl-C stops every thread before it propagates. Threads cannot
be killed, so they stop at their next progress report (a few times a second), and events reach
the caller's ``on_event`` from the calling thread only, as they do from worker processes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any, Callable

from ..format.schema import Schema
from .base import Source, Task
from .worker import TaskResult, WriteOptions, run_task

__all__ = ["run_in_threads"]

_POLL_SECONDS = 0.2


class _Stopped(BaseException):
    """Raised inside a task's thread once the convert is being stopped."""


def run_in_threads(
    source: Source,
    schema: Schema,
    tasks: Sequence[Task],
    opts: WriteOptions,
    skip_bad: bool,
    workers: int,
    on_event: Callable[[str, Any], None],
) -> list[TaskResult]:
    """Run every task on ``workers`` threads; results in task order."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for i in sorted(range(len(tasks)), key=lambda i: -tasks[i].input_bytes):
        todo.put(i)  # largest first, as the process pool does
    events: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def report(kind: str, value: Any) -> None:
        if stop.is_set():
            raise _Stopped
        events.put((kind, value))

    def work() -> None:
        while not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                result = run_task(source, schema, i, tasks[i], opts, skip_bad, report)
            except _Stopped:
                return
            except BaseException as e:
                events.put(("error", e))
                return
            events.put(("done", result))

    threads = [
        threading.Thread(target=work, name=f"fastload-convert-{k}", daemon=True)
        for k in range(workers)
    ]
    results: dict[int, TaskResult] = {}
    try:
        for t in threads:
            t.start()
        while len(results) < len(tasks):
            try:
                kind, value = events.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and events.empty():
                    raise RuntimeError("convert threads ended with tasks left") from None
                continue
            if kind == "error":
                raise value
            if kind == "done":
                results[value.index] = value
            on_event(kind, value)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return [results[i] for i in range(len(tasks))]
