"""Converting one task: read its records from the source, write them as one output part.

:func:`run_task` is the whole job of a worker and runs the same way in the main process
(``workers=1``) or in a worker process (:func:`worker_main`, started by :mod:`.pool`). Progress
and skipped records are announced through a ``report(kind, value)`` callback.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import errors
from ..errors import ConvertError, FastloadError, SchemaError, SourceRecordError
from ..format.schema import Schema
from ..writer import Writer
from .base import Consumed, Source, Task

__all__ = [
    "WriteOptions",
    "TaskResult",
    "run_task",
    "worker_main",
    "error_payload",
    "error_from_payload",
]

#: ``report(kind, value)``: ("progress", (records, skipped, input bytes)) increments now and
#: then (the bytes of a task add up to its ``input_bytes`` by its end), ("skip", message) for the
#: first skipped records of a task, ("done", TaskResult) at the end.
Report = Callable[[str, Any], None]
_REPORT_SECONDS = 0.2  # how often progress is reported
_SKIP_MESSAGES_PER_TASK = 10  # skip reasons sent to the main process; the rest are counted
_EXAMPLES_PER_TASK = 5


@dataclass(frozen=True)
class WriteOptions:
    """How every part is written (the Writer's arguments, less the schema and part)."""

    dst: str
    shard_size: int
    block_size: int
    compression: str
    level: int
    storage_options: dict[str, Any] | None
    jpeg_index: bool = True


@dataclass
class TaskResult:
    index: int
    input_bytes: int
    records: int = 0
    skipped: int = 0
    skip_examples: list[str] = field(default_factory=list)
    output_bytes: int = 0


def run_task(
    source: Source,
    schema: Schema,
    index: int,
    task: Task,
    opts: WriteOptions,
    skip_bad: bool,
    report: Report,
) -> TaskResult:
    """Write ``task``'s records as part ``index`` of the output. A bad record raises its
    SourceRecordError unless ``skip_bad``; any other failure raises a FastloadError naming the
    task. On failure the part is not written (no part file, no finished shard of it counts)."""
    result = TaskResult(index, task.input_bytes)
    try:
        with Writer(
            opts.dst,
            schema,
            part=index,
            shard_size=opts.shard_size,
            block_size=opts.block_size,
            compression=opts.compression,
            level=opts.level,
            storage_options=opts.storage_options,
            jpeg_index=opts.jpeg_index,
        ) as writer:
            columns = source.read_columns(task)
            if columns is not None:
                _copy_columns(columns, writer, result, report)
            else:
                _copy_records(source, task, writer, skip_bad, result, report)
        result.output_bytes = writer.bytes_written
    except FastloadError:
        raise
    except Exception as e:
        raise ConvertError(f"{task.describe()}: {type(e).__name__}: {e}") from e
    return result


class _Ticker:
    """Reports ("progress", (records, skipped, bytes)) increments, at most every
    _REPORT_SECONDS. The bytes never pass the task's ``input_bytes``, and :meth:`finish` sends
    what is left of them, so the bar ends each task exactly where the task's size says."""

    def __init__(self, report: Report, input_bytes: int) -> None:
        self._report = report
        self._total = input_bytes
        self.records = self.skipped = self.bytes = 0
        self._sent = (0, 0, 0)
        self._next = time.monotonic() + _REPORT_SECONDS

    def consumed(self, n: int) -> None:
        self.bytes = min(self._total, self.bytes + max(0, n))

    def tick(self) -> None:
        if time.monotonic() >= self._next:
            self.flush()

    def flush(self) -> None:
        now = (self.records, self.skipped, self.bytes)
        if now != self._sent:
            sent = self._sent
            self._report("progress", (now[0] - sent[0], now[1] - sent[1], now[2] - sent[2]))
            self._sent = now
        self._next = time.monotonic() + _REPORT_SECONDS

    def finish(self) -> None:
        self.bytes = self._total
        self.flush()


def _copy_columns(columns, writer: Writer, result: TaskResult, report: Report) -> None:
    ticker = _Ticker(report, result.input_bytes)
    for chunk in columns:
        writer.write_columns(chunk)
        ticker.records = writer.records_written
        ticker.consumed(sum(getattr(v, "nbytes", 0) for v in chunk.values()))
        ticker.tick()
    result.records = writer.records_written
    ticker.finish()


def _copy_records(
    source: Source, task: Task, writer: Writer, skip_bad: bool, result: TaskResult, report: Report
) -> None:
    ticker = _Ticker(report, task.input_bytes)
    n = 0  # records and bad records so far: the position in the task, for messages
    for item in source.read(task):
        if isinstance(item, Consumed):
            ticker.consumed(item.bytes)
            ticker.tick()
            continue
        if not isinstance(item, SourceRecordError):
            try:
                writer.write(item)
                result.records += 1
            except SchemaError as e:  # a value the source passed on but the format rejects
                item = SourceRecordError(f"{task.describe()}: record {n} of this part: {e}")
        if isinstance(item, SourceRecordError):
            if not skip_bad:
                raise item
            _skip(item, result, report)
        n += 1
        if n % 64 == 0:
            ticker.records, ticker.skipped = result.records, result.skipped
            ticker.tick()
    ticker.records, ticker.skipped = result.records, result.skipped
    ticker.finish()


def _skip(error: SourceRecordError, result: TaskResult, report: Report) -> None:
    result.skipped += 1
    if len(result.skip_examples) < _EXAMPLES_PER_TASK:
        result.skip_examples.append(str(error))
    if result.skipped <= _SKIP_MESSAGES_PER_TASK:
        report("skip", str(error))


# -- in a worker process ---------------------------------------------------------------------
def worker_main(
    source: Source,
    schema: Schema,
    opts: WriteOptions,
    skip_bad: bool,
    tasks,
    results,
    current,
    slot: int,
) -> None:
    """A worker process: run tasks from the ``tasks`` queue until a None, posting events.

    Events on ``results``: ("progress", ...), ("skip", ...), ("done", TaskResult) and
    ("error", (index, payload)). ``current[slot]`` holds the index of the task being run
    (shared memory, so it is up to date even if this process is killed without warning).
    The main process decides what to do on Ctrl-C, so SIGINT is ignored here; if the main
    process dies, the worker exits too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()

    def report(kind: str, value: Any) -> None:
        if parent is not None and not parent.is_alive():
            os._exit(1)  # orphaned: nobody will merge what we write
        results.put((kind, value))

    while (job := tasks.get()) is not None:
        index, task = job
        current[slot] = index
        try:
            result = run_task(source, schema, index, task, opts, skip_bad, report)
        except BaseException as e:
            report("error", (index, error_payload(e)))
            return
        report("done", result)
        current[slot] = -1


def error_payload(e: BaseException) -> tuple[str, str, str]:
    """An exception as plain strings (class name, message, traceback), safe to send."""
    trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return type(e).__name__, str(e), trace


def error_from_payload(payload: tuple[str, str, str]) -> FastloadError:
    """Rebuild a worker's error: its own class if it is one of fastload's, else ConvertError."""
    name, message, trace = payload
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, FastloadError)):
        cls, message = ConvertError, f"{name}: {message}"
    error = cls(message)
    if sys.version_info >= (3, 11):
        error.add_note(f"in a convert worker process:\n{trace.rstrip()}")
    return error
