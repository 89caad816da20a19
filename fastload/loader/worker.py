"""The loader's worker: fill batch slabs from a dataset until told to stop.

Runs as a process (default) or a thread; both execute :func:`worker_loop`. Failure semantics
(if the code disagrees with this comment, the code is wrong):

- an exception while filling a batch is sent to the consumer, who re-raises it with this
  worker's traceback and the batch's record indices; the worker keeps serving later tasks;
- an exception in ``worker_init_fn`` is sent once and the worker exits;
- a process worker whose parent died exits within a poll interval (no orphans);
- the consumer detects a worker that died without a word (killed, segfault) by its exit code.
"""

from __future__ import annotations

import errno
import gc
import os
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..read.contract import Readable
from ..read.dataset import Dataset
from ..read.mix import Mix
from .exits import reset_inherited_handlers
from .layout import BatchLayout
from .messages import BatchResult, BatchTask, WorkerError, decode, encode_results
from .slabs import SlabMap, out_of_descriptors
from .splits import split_of

__all__ = ["WorkerSetup", "worker_loop", "short_indices"]

POLL_SECONDS = 1.0


@dataclass
class WorkerSetup:
    """What every worker gets once, at start."""

    dataset: Readable
    layout: BatchLayout
    worker_init_fn: Callable[[int], None] | None
    num_workers: int
    seed: int
    skip_bad: bool = False  # images that do not decode are dropped (badsamples.py)


def worker_loop(
    setup: WorkerSetup,
    worker_id: int,
    slabs: SlabMap,
    tasks,
    results,
    is_process: bool,
    inherited: Sequence = (),
) -> None:
    """Serve tasks from the connection ``tasks`` (lists of BatchTask, or None to stop) and
    send a list of BatchResults for each on ``results`` (the same duplex pipe, in practice).
    ``inherited``: connections a forked worker got by inheritance and must close."""
    for conn in inherited:
        conn.close()
    if is_process:
        # Handlers inherited from the main process (a SIGTERM handler that swallows the
        # signal would keep this worker alive at exit: exits.py); Ctrl-C is the consumer's.
        reset_inherited_handlers(ignore_interrupt=True)
        import torch

        torch.set_num_threads(1)  # two workers on two cores must not fight over threads
        # The objects inherited from the consumer are shared copy-on-write; a garbage
        # collection that walks them writes to every page they are on, and each worker ends
        # up with a private copy of the consumer's heap (~50 MB each, measured). Frozen, the
        # collector leaves them alone (they live as long as this process anyway).
        gc.freeze()
        _return_big_buffers()
        _seed_like_torch(setup, worker_id)
    if setup.worker_init_fn is not None:
        try:
            setup.worker_init_fn(worker_id)
        except BaseException as e:
            _send(
                results,
                [BatchResult(-1, -1, error=WorkerError.capture(e, worker_id, "in worker_init_fn"))],
            )
            return
    parent = os.getppid()
    backlog: deque = deque()  # messages received but not yet served (read-ahead, below)
    read_ahead = bool(getattr(setup.dataset, "remote", False)) and callable(
        getattr(setup.dataset, "prefetch", None)
    )
    while True:
        if not backlog:
            try:
                if not tasks.poll(POLL_SECONDS):
                    if is_process and os.getppid() != parent:
                        return  # orphaned: the consumer is gone
                    continue
                data = tasks.recv_bytes()
            except (EOFError, OSError):
                return  # the consumer closed its end
            if not _decoded_into(backlog, data, results, worker_id):
                return
            if read_ahead:
                _hint(setup.dataset, backlog[-1])
        if read_ahead:
            # Remote data: take every message already queued for this worker (up to
            # prefetch_factor) and start fetching their records' blocks, so that the network
            # works on batch k+1.. while this worker decodes batch k.
            try:
                while backlog[-1] is not None and tasks.poll(0):
                    if not _decoded_into(backlog, tasks.recv_bytes(), results, worker_id):
                        return
                    _hint(setup.dataset, backlog[-1])
            except (EOFError, OSError):
                backlog.append(None)
        task = backlog.popleft()
        if task is None:
            return
        # A message is a list of tasks (several cheap batches per message: each message
        # costs a wake-up of the other side) and is answered by one list of results.
        _send(results, [_run(setup, worker_id, slabs, t) for t in task])


def _seed_like_torch(setup: WorkerSetup, worker_id: int) -> None:
    """What torch's own worker process does before ``worker_init_fn``: make
    ``get_worker_info()`` describe this worker and seed ``random``, torch and numpy from the
    iteration's base seed and the worker id (the same seeds as torch's DataLoader with the
    same generator). The seeding only where user code runs in the worker (worker_init_fn,
    transform=, a Dataset subclass): nothing else reads those generators, and seeding them
    loads torch's and numpy's random modules, ~3 MB a worker. (Thread workers share the
    consumer's generators and module state: neither is done.)"""
    from torch.utils.data._utils import worker as torch_worker

    base = setup.seed % 2**64
    seed = (base + worker_id) % 2**64
    torch_worker._worker_info = torch_worker.WorkerInfo(
        id=worker_id,
        num_workers=setup.num_workers,
        seed=seed,
        dataset=setup.dataset,  # pyright: ignore[reportArgumentType] (torch annotates any object)
    )
    if not _runs_user_code(setup):
        return
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        np.random.seed(torch_worker._generate_state(base, worker_id))
    except Exception:  # another torch: still a distinct seed per worker
        np.random.seed(seed % 2**32)


def _runs_user_code(setup: WorkerSetup) -> bool:
    datasets = setup.dataset.datasets if type(setup.dataset) is Mix else [setup.dataset]
    return (
        setup.worker_init_fn is not None
        or setup.layout.transform is not None
        or any(type(d) is not Dataset for d in datasets)
    )


def _decoded_into(backlog: deque, data: bytes, results, worker_id: int) -> bool:
    """Append the tasks of message ``data`` to ``backlog``. A message that cannot be decoded
    (a batch buffer's file descriptor refused at this process's open-file limit: "received 0
    items of ancdata") is reported to the consumer as this worker's last word, and False
    returned: the worker stops."""
    try:
        backlog.append(decode(data))
        return True
    except Exception as e:
        # A buffer's descriptor travels beside the message (the consumer's resource sharer,
        # or the socket's ancillary data); at the open-file limit of either side it is lost.
        trace = traceback.format_exc()
        if any(
            k in trace
            for k in ("ancdata", "rebuild_storage_fd", "resource_sharer", "Too many open files")
        ):
            cause = e
            e = OSError(errno.EMFILE, out_of_descriptors("pass a batch buffer to a worker"))
            e.__cause__ = cause
        _send(
            results,
            [
                BatchResult(
                    -1, -1, error=WorkerError.capture(e, worker_id, "while receiving a task")
                )
            ],
        )
        return False


def _return_big_buffers(threshold: int = 4 << 20) -> None:
    """Have glibc give buffers of ``threshold`` bytes or more back to the system when they are
    freed. By default it raises that threshold to the largest buffer freed so far (up to
    32 MB) and keeps up to twice that of free heap: a batch of 256 JPEGs gathered into one
    ~30 MB buffer left ~55 MB of idle heap in every worker (measured). Mapping a buffer that
    large anew costs well under 1% of the batch's decode time. A no-op off glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    M_MMAP_THRESHOLD = -3
    mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(threshold))


def _hint(dataset, message) -> None:
    """Tell a remote dataset which records this worker reads next (never fails the worker:
    a real problem shows when the batch is read)."""
    if not message:
        return
    try:
        dataset.prefetch(np.concatenate([split_of(t.split).to_read(dataset, t) for t in message]))
    except Exception:
        pass


def _run(setup: WorkerSetup, worker_id: int, slabs: SlabMap, task: BatchTask) -> BatchResult:
    if task.new_slab is not None:
        slabs.add(task.slab, *task.new_slab)
    try:
        split = split_of(task.split)
        return split.fill(setup.dataset, setup.layout, slabs[task.slab], task, setup.skip_bad)
    except Exception as e:
        where = f"while loading batch {task.batch} (dataset indices {short_indices(task.indices)})"
        return BatchResult(
            task.batch,
            task.slab,
            error=WorkerError.capture(e, worker_id, where),
            part=task.part,
            parts=task.parts,
        )


def _send(conn, results: list) -> None:
    try:
        conn.send_bytes(encode_results(results))
    except (OSError, ValueError):
        pass  # the consumer is gone; the next recv ends this worker


def short_indices(indices) -> str:
    """``[3, 9, 4, ...]``: the first indices of a batch, for messages."""
    indices = np.asarray(indices).reshape(-1)
    head = ", ".join(str(int(i)) for i in indices[:8])
    return f"[{head}{', ...' if len(indices) > 8 else ''}]"
