"""``convert()``: any supported input to a fastload dataset, in parallel, deterministically.

The input is split into tasks by the source alone; task ``i`` is written as part ``i`` by its own
``Writer(part=i)``; :func:`~fastload.writer.merge_parts` then writes the one manifest, last.
So the output is byte-identical for any number of workers, and a convert that fails or is
killed leaves no manifest (the next convert to the same place clears its leftovers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConvertError, FastloadError
from ..format.codec import BlockCompressor
from ..format.schema import Schema
from ..io.fs import is_process_local, open_fs
from ..io.inputs import Inputs
from ..utils import format_size, parse_size
from ..writer import DEFAULT_BLOCK_SIZE, DEFAULT_SHARD_SIZE, merge_parts, prepare_destination
from .auto import open_source
from .base import Source, Task
from .pool import run_in_processes
from .progress import Progress
from .threads import run_in_threads
from .worker import TaskResult, WriteOptions, run_task

__all__ = ["convert", "ConvertResult", "default_workers"]

log = logging.getLogger("fastload.convert")
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ConvertResult:
    """What a convert did."""

    dst: str
    source: str  # the source's name, e.g. "imagefolder"
    records: int
    skipped: int
    skip_examples: tuple[str, ...]  # a few reasons records were skipped
    shards: int
    tasks: int
    workers: int  # processes or threads the tasks ran on (0: on a Ray cluster)
    input_bytes: int
    output_bytes: int
    seconds: float
    notes: tuple[str, ...]  # facts from the source (class names, dropped tokens)

    @property
    def records_per_second(self) -> float:
        return self.records / max(self.seconds, 1e-9)

    @property
    def input_bytes_per_second(self) -> float:
        return self.input_bytes / max(self.seconds, 1e-9)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"converted {self.records:,} records ({self.source}) into {self.shards} shard(s) "
            f"at {self.dst}",
            f"input {format_size(self.input_bytes)} -> output {format_size(self.output_bytes)} "
            f"in {self.seconds:.1f} s ({self.records_per_second:,.0f} records/s, "
            f"{format_size(self.input_bytes_per_second)}/s of input)",
        ]
        if self.skipped:
            lines.append(f"skipped {self.skipped:,} bad record(s), e.g.:")
            lines += [f"  {e}" for e in self.skip_examples]
        return "\n".join(lines)


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    source: str = "auto",
    workers: int | None = None,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    block_size: int | str = DEFAULT_BLOCK_SIZE,
    compression: str = "auto",
    level: int = 3,
    overwrite: bool = False,
    skip_bad: bool = False,
    storage_options: dict[str, Any] | None = None,
    src_storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    ray: bool | str = False,
    jpeg_index: bool = True,
    **source_options: Any,
) -> ConvertResult:
    """Convert ``src`` into a fastload dataset at ``dst``.

    ``src`` is a path or fsspec URL (``s3://``, ``gs://``, ``hf://``, ...) of a file or a
    directory, or a glob or brace pattern of files (``s3://b/train-*.parquet``,
    ``gs://b/shard-{000..099}.tar``); ``dst`` a path or fsspec URL. ``storage_options`` are
    the fsspec options of both, unless ``src_storage_options`` gives SRC its own.

    ``source`` is ``"auto"`` or one of imagefolder, parquet, jsonl, webdataset, tokens;
    ``source_options`` go to it (``seq_len``, ``dtype``, ``overlap`` for tokens;
    ``decode_check`` for images; ``infer_lines`` for jsonl; ``split`` and ``image_columns``
    for Parquet/Arrow and Hugging Face datasets). Input is split into tasks of
    about ``shard_size`` input bytes, run on ``workers`` processes (1: in this process; None,
    the default: :func:`default_workers`, as ``fastload convert`` without ``--workers``), or
    with ``ray`` as tasks of a Ray cluster (``True``: the one ``ray.init()`` finds or starts;
    a string: its address), whose nodes must all reach ``src`` and ``dst`` (see cluster.py).

    ``jpeg_index``: store each baseline JPEG with its entropy index (``Writer``).

    A bad input record fails the convert with a SourceRecordError naming it, unless
    ``skip_bad``, which skips and counts it. ``dst`` must be new or empty, or hold a dataset
    and ``overwrite=True``. No manifest is written unless every task succeeds.
    """
    start = time.monotonic()
    src, dst = os.fspath(src), os.fspath(dst)
    opts = _write_options(
        dst, shard_size, block_size, compression, level, storage_options, jpeg_index
    )
    workers = _checked_workers(workers)
    _check_not_nested(src, dst)
    inputs = Inputs(src, storage_options if src_storage_options is None else src_storage_options)
    reader, schema, tasks, notes = _plan(inputs, source, opts.shard_size, source_options)
    local_only = _process_local(dst, storage_options) or _process_local(src, inputs.storage_options)
    if ray and local_only:
        raise ConvertError(f"{src} -> {dst}: a Ray cluster cannot reach this process's memory")
    workers = 0 if ray else min(workers, len(tasks))
    with _about_destination(dst):
        prepare_destination(dst, overwrite=overwrite, storage_options=storage_options)
    try:
        threads = reader.threads_suffice or local_only
        results = _run(reader, schema, tasks, opts, skip_bad, workers, threads, progress, ray)
        with _about_destination(dst):
            manifest = merge_parts(
                dst,
                len(tasks),
                storage_options=storage_options,
                classes=reader.classes(),
                features=reader.features(),
            )
    except BaseException:
        # No manifest was written; remove the parts' shards so the failure leaves no clutter.
        with contextlib.suppress(Exception):
            prepare_destination(dst, overwrite=False, storage_options=storage_options)
        raise
    return ConvertResult(
        dst=dst,
        source=reader.name,
        records=manifest.records,
        skipped=sum(r.skipped for r in results),
        skip_examples=tuple(e for r in results for e in r.skip_examples)[:_MAX_EXAMPLES],
        shards=len(manifest.shards),
        tasks=len(tasks),
        workers=workers,
        input_bytes=sum(t.input_bytes for t in tasks),
        output_bytes=manifest.bytes,
        seconds=time.monotonic() - start,
        notes=notes,
    )


def _checked_workers(workers: int | None) -> int:
    """``workers`` as convert takes it: a positive integer, None for the default."""
    if workers is None:
        return default_workers()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConvertError(f"workers must be a positive integer, got {workers!r}")
    return workers


def _plan(
    inputs: Inputs, source: str, shard_size: int, options: dict[str, Any]
) -> tuple[Source, Schema, list[Task], tuple[str, ...]]:
    """The source of ``inputs``, its schema, its tasks and its notes (logged here)."""
    reader = open_source(inputs, source, shard_size=shard_size, **options)
    schema = reader.schema()
    tasks = reader.tasks()
    if not tasks:
        raise ConvertError(f"{inputs.src}: no records to convert")
    notes = tuple(reader.notes())
    for note in notes:
        log.info("%s", note)
    return reader, schema, tasks, notes


def default_workers() -> int:
    """The worker processes a convert uses unless told: one per CPU, at most 4 (past that, a
    convert is usually bound by the disk or the network, not by its CPUs)."""
    return min(4, os.cpu_count() or 1)


def _write_options(
    dst: str,
    shard_size: int | str,
    block_size: int | str,
    compression: str,
    level: int,
    storage_options: dict[str, Any] | None,
    jpeg_index: bool = True,
) -> WriteOptions:
    """Checked Writer arguments: bad ones fail here, before any work, not in a worker."""
    try:
        opts = WriteOptions(
            dst,
            parse_size(shard_size),
            parse_size(block_size),
            compression,
            level,
            storage_options,
            bool(jpeg_index),
        )
        BlockCompressor(compression, level)
    except ValueError as e:
        raise ConvertError(str(e)) from None
    if opts.shard_size <= 0 or opts.block_size <= 0:
        raise ConvertError("shard_size and block_size must be positive")
    return opts


@contextlib.contextmanager
def _about_destination(dst: str) -> Iterator[None]:
    """A failure inside that is not already one of fastload's (an endpoint that does not
    answer, credentials refused) becomes a one-line ConvertError naming DST, not a client
    library's traceback."""
    try:
        yield
    except FastloadError:
        raise
    except Exception as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise ConvertError(f"destination {dst}: {type(e).__name__}: {text}") from e


def _process_local(url: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether ``url`` is on a filesystem that only this process sees (``memory://``): its
    tasks then run on threads, which share it."""
    return "://" in url and is_process_local(open_fs(url, storage_options)[0])


def _check_not_nested(src: str, dst: str) -> None:
    """Refuse a local DST inside a SRC directory: the output would become part of the input
    (for an image folder, a new class that shifts every label)."""
    if "://" in dst or not os.path.isdir(src):
        return
    a, b = os.path.realpath(src), os.path.realpath(dst)
    if os.path.commonpath([a, b]) == a:
        raise ConvertError(
            f"destination {dst} is inside the input directory {src}; choose a "
            "destination outside it"
        )


def _run(
    reader: Source,
    schema: Schema,
    tasks: list[Task],
    opts: WriteOptions,
    skip_bad: bool,
    workers: int,
    threads: bool,
    progress: bool,
    ray: bool | str,
) -> list[TaskResult]:
    """Every task's result, in task order, from this process, worker processes (``threads``:
    threads of this process) or Ray."""
    bar = Progress(sum(t.input_bytes for t in tasks), len(tasks), enabled=progress)
    with _sigterm_raises(), bar.active():
        if ray:
            from .cluster import run_on_ray

            return run_on_ray(reader, schema, tasks, opts, skip_bad, bar.on_event, ray)
        if workers > 1:
            run = run_in_threads if threads else run_in_processes
            return run(reader, schema, tasks, opts, skip_bad, workers, bar.on_event)
        results = []
        for i, task in enumerate(tasks):
            results.append(run_task(reader, schema, i, task, opts, skip_bad, bar.on_event))
            bar.on_event("done", results[-1])
        return results


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises SystemExit(143) in the main thread, so cleanup runs
    (workers stopped, partial shards removed) as it does for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
