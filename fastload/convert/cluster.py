"""Running convert tasks on a Ray cluster, when one machine is not enough.

``convert(..., ray=True)`` / ``fastload convert --ray``: each task (a part of the output) is
a Ray task that reads its share of the input and writes its part straight to DST, as a local
worker process would; the driver merges the parts' manifests, last, as always, so the output
is byte-identical to a convert on one machine. Every node must reach SRC and DST: object
store URLs (``s3://``, ``gs://``), or paths on a filesystem every node mounts.

Failure semantics, as for worker processes (pool.py):

- The first task that fails stops the convert: the other tasks are cancelled and waited
  for, then the task's error is raised here with the remote traceback attached as a note;
  the runner then removes what the parts wrote.
- A node or worker that dies is retried by Ray (``max_retries``): a task rewrites its part
  from the start, under the same names. A task that still cannot finish raises a
  ConvertError naming it.
- Ctrl-C or SIGTERM cancels every task before the exception propagates (SIGTERM, which
  ray.init takes over, is given back to the runner), so the runner's cleanup runs.

A cluster is joined with ``ray.init(address=...)`` (``True``: the one Ray finds on its own,
``RAY_ADDRESS`` or one started with ``ray start``, else a new local one); one this convert
started is shut down at its end.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable

from ..errors import ConvertError
from ..format.schema import Schema
from .base import Source, Task
from .worker import TaskResult, WriteOptions, error_from_payload, error_payload, run_task

__all__ = ["run_on_ray"]

log = logging.getLogger("fastload.convert")
_WAIT_SECONDS = 0.5
_CANCEL_SECONDS = 30.0  # for cancelled tasks to end before their parts are removed
_MAX_RETRIES = 3  # a task whose worker or node died is run again this many times
_CONNECT_SECONDS = 10.0  # for a cluster's address to answer


def run_on_ray(
    source: Source,
    schema: Schema,
    tasks: Sequence[Task],
    opts: WriteOptions,
    skip_bad: bool,
    on_event: Callable[[str, Any], None],
    address: str | bool = True,
) -> list[TaskResult]:
    """Run every task on the Ray cluster at ``address``; results in task order (see the
    module docstring)."""
    with _cluster(address) as (ray, started):
        remote = ray.remote(num_cpus=1, max_retries=_MAX_RETRIES)(_ray_task)
        shared = ray.put(source)  # sent to each node once, not with every task
        order = sorted(range(len(tasks)), key=lambda i: -tasks[i].input_bytes)
        pending = {remote.remote(shared, schema, i, tasks[i], opts, skip_bad): i for i in order}
        results: dict[int, TaskResult] = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=_WAIT_SECONDS)
                for ref in done:
                    index = pending.pop(ref)
                    kind, value = _outcome(ray, ref, tasks[index])
                    if kind == "error":
                        raise error_from_payload(value)
                    results[index] = value
                    for example in value.skip_examples:
                        on_event("skip", example)
                    on_event("progress", (value.records, value.skipped, value.input_bytes))
                    on_event("done", value)
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C or SIGTERM: a cluster started here is stopped, its workers with it (a
            # cancel right after the interrupted wait crashed Ray's task manager here, one
            # time in three: "Tried to complete task that was not pending"); on a cluster
            # of others the tasks are cancelled.
            if not started:
                _cancel(ray, list(pending))
            raise
        except BaseException:
            _cancel(ray, list(pending))
            raise
    return [results[i] for i in range(len(tasks))]


def _ray_task(
    source: Source, schema: Schema, index: int, task: Task, opts: WriteOptions, skip_bad: bool
) -> tuple[str, Any]:
    """One task on a Ray worker: ("done", TaskResult) or ("error", payload). Errors travel as
    plain strings (error_payload), as from a worker process, so the driver raises fastload's
    own error class and not Ray's wrapper of it."""
    try:
        return "done", run_task(
            source, schema, index, task, opts, skip_bad, lambda kind, value: None
        )
    except Exception as e:
        return "error", error_payload(e)


def _outcome(ray, ref, task: Task) -> tuple[str, Any]:
    """The task's ("done" | "error", value); a task Ray could not run (its worker or node
    died past the retries, an object lost) raises a ConvertError naming it."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        raise ConvertError(
            f"Ray could not run the convert task for {task.describe()}: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from e


def _cancel(ray, refs: list) -> None:
    """Cancel ``refs`` and wait until they have ended, so that none writes after the runner
    removes the parts. A running task gets a KeyboardInterrupt (not force=True: that kills
    its worker, which Ray may then retry)."""
    if not refs:
        return
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    deadline = time.monotonic() + _CANCEL_SECONDS
    left = refs
    while left and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            _, left = ray.wait(left, num_returns=len(left), timeout=_WAIT_SECONDS)
    if left:
        log.warning(
            "fastload convert: %d cancelled Ray task(s) had not ended after %.0f s",
            len(left),
            _CANCEL_SECONDS,
        )


@contextlib.contextmanager
def _cluster(address: str | bool) -> Iterator[Any]:
    """``(ray, started)``: the ``ray`` module, connected to the cluster at ``address``
    (True: as ``ray.init()`` finds one, or starts it), and whether this call connected it
    (then it is shut down after)."""
    try:
        import ray
    except ImportError:
        raise ConvertError("convert on Ray needs Ray: pip install 'fastload[ray]'") from None
    started = False
    if not ray.is_initialized():
        if isinstance(address, str):
            _check_reachable(address)
        main = threading.current_thread() is threading.main_thread()
        on_sigterm = signal.getsignal(signal.SIGTERM) if main else None
        try:
            ray.init(
                address=address if isinstance(address, str) else None,  # None: find or start
                include_dashboard=False,
                log_to_driver=False,
            )
        except Exception as e:
            raise ConvertError(f"could not join a Ray cluster at {address!r}: {e}") from e
        finally:
            # ray.init takes SIGTERM for itself (the process then dies mid-write, its Ray
            # processes left running): give it back to the runner, which cleans up.
            if on_sigterm is not None:
                signal.signal(signal.SIGTERM, on_sigterm)
        started = True
    try:
        yield ray, started
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str) -> None:
    """A ConvertError now, naming ``address``, if nothing answers at its host and port
    (ray.init would try for minutes); names such as "auto" and "local" are left to Ray."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address if "://" in address else f"gcs://{address}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return
    if not host or not port:
        return
    try:
        socket.create_connection((host, port), timeout=_CONNECT_SECONDS).close()
    except OSError as e:
        raise ConvertError(
            f"could not join a Ray cluster at {address!r}: nothing answers at {host}:{port} ({e})"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
