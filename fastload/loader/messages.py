"""The loader's messages between the consumer and its workers, and their bytes.

:class:`BatchTask` says which records go into which slab (and which share of the batch, by
which work-splitting strategy: splits.py); :class:`BatchResult` says how long that took, or
carries the :class:`WorkerError` it met. Most messages are plain. Pickling them (dataclasses
holding numpy arrays and dicts) cost the consumer ~5 us per batch each way, which for small
batches (a few KB of tokens) was most of its time per batch. So the plain cases travel as
one flat numpy array instead:

- tasks: ``TASKS`` magic, then int64 words ``k``, and per task ``batch, slab, n, seed0,
  seed1, part, parts, split`` (seeds as uint64 bit patterns), then all the tasks' indices
  back to back;
- results: ``RESULTS`` magic, then per result float64 ``batch, slab, samples, read, decode,
  bytes, decompressed, part, parts``.

Anything else (a task that carries a new slab's handle, seeds that are not two ints in
[0, 2**64), a result with an error, listed fields, remote-read counters or skipped rows, the
``None`` that stops a worker) is pickled as before; the receiver tells the two apart by the
magic (a pickle never starts with it).
"""

from __future__ import annotations

import os
import pickle
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BatchTask",
    "BatchResult",
    "WorkerError",
    "Failed",
    "WHOLE",
    "encode_tasks",
    "encode_results",
    "decode",
]

WHOLE = 0  # BatchTask.split of a batch filled whole by one worker (splits.WholeBatches)


@dataclass
class BatchTask:
    """Fill records ``indices`` into ``slab`` as batch ``batch`` of the epoch: all of it, or
    share ``part`` of ``parts`` as strategy ``split`` divides it (splits.py: its ``code``)."""

    batch: int  # position of the batch in the epoch
    slab: int
    indices: np.ndarray
    rng_seed: tuple
    new_slab: Any = None  # (arena, place) of a slab this worker has not seen yet
    part: int = 0
    parts: int = 1
    split: int = WHOLE


@dataclass
class BatchResult:
    """What a worker did with a :class:`BatchTask`: ``samples`` rows filled (a share: its
    rows), the fields that travel as lists, stage timings, or the error it met."""

    batch: int
    slab: int
    samples: int = 0
    listed: dict | None = None
    timings: dict | None = None
    error: WorkerError | None = None
    part: int = 0
    parts: int = 1
    bad: list | None = None  # rows skipped: (row, why)
    rows: np.ndarray | None = None  # a share by block with listed fields: its rows


@dataclass
class Failed:
    """A batch that failed, handed on in its place (not a message between processes): the
    loader's iterator raises ``error`` from that batch's ``next()``, and the next ``next()``
    returns the batch after it, as torch's DataLoader does."""

    error: BaseException


TASKS = b"FLt3"
RESULTS = b"FLr2"
_U64 = (1 << 64) - 1
_TASK_WORDS = 8
_RESULT_WORDS = 9


@dataclass
class WorkerError:
    """An exception from a worker, as plain data (its class may not be importable here)."""

    type_name: str
    module: str
    message: str
    traceback: str
    worker_id: int
    pid: int
    where: str

    @classmethod
    def capture(cls, e: BaseException, worker_id: int, where: str) -> WorkerError:
        trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        return cls(
            type(e).__name__, type(e).__module__, str(e), trace, worker_id, os.getpid(), where
        )

    def exception(self) -> Exception:
        """The exception to raise in the consumer: the same class where it can be rebuilt
        from a message, else RuntimeError, with the worker's traceback in the message (as
        torch does)."""
        text = (
            f"Caught {self.type_name} in fastload worker {self.worker_id} (pid {self.pid}) "
            f"{self.where}.\nOriginal {self.traceback}"
        )
        cls = _exception_class(self.module, self.type_name)
        try:
            return cls(text)
        except Exception:
            return RuntimeError(text)

    def reraise(self) -> None:
        raise self.exception()


def _exception_class(module: str, name: str) -> type:
    import importlib

    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception:
        return RuntimeError
    return cls if isinstance(cls, type) and issubclass(cls, Exception) else RuntimeError


def _pickle(obj: Any) -> bytes:
    from multiprocessing.reduction import ForkingPickler

    return bytes(ForkingPickler.dumps(obj))  # shares tensors by handle, as Connection.send does


def encode_tasks(tasks: list) -> bytes:
    """``tasks`` (a list of BatchTask, or None) as message bytes."""
    if tasks is None or any(t.new_slab is not None or len(t.rng_seed) != 2 for t in tasks):
        return _pickle(tasks)
    try:  # a seed that is not an int in [0, 2**64) raises here: pickled instead
        head = np.array(
            [
                (t.batch, t.slab, len(t.indices), *t.rng_seed, t.part, t.parts, t.split)
                for t in tasks
            ],
            np.uint64,
        )
    except (TypeError, ValueError, OverflowError):
        return _pickle(tasks)
    if head.dtype != np.uint64 or head.shape != (len(tasks), _TASK_WORDS):
        return _pickle(tasks)
    indices = np.concatenate([t.indices for t in tasks]).astype(np.int64, copy=False)
    return b"".join([TASKS, len(tasks).to_bytes(8, "little"), head.tobytes(), indices.tobytes()])


def encode_results(results: list) -> bytes:
    """``results`` (a list of BatchResult) as message bytes."""
    rows = []
    for r in results:
        timings = r.timings
        if r.error is not None or r.listed or not timings or len(timings) != 4 or r.bad:
            return _pickle(results)  # listed fields, an error or io counters: pickled
        rows.append(
            (
                r.batch,
                r.slab,
                r.samples,
                timings["read"],
                timings["decode"],
                timings["bytes"],
                timings["decompressed"],
                r.part,
                r.parts,
            )
        )
    return RESULTS + np.array(rows, np.float64).tobytes()


def decode(data) -> Any:
    """The tasks, results or pickled object in message bytes ``data``."""
    magic = bytes(data[:4])
    if magic == TASKS:
        k = int(np.frombuffer(data, np.int64, 1, 4)[0])
        head = np.frombuffer(data, np.uint64, k * _TASK_WORDS, 12).reshape(k, _TASK_WORDS)
        indices = np.frombuffer(data, np.int64, offset=12 + head.nbytes)
        tasks, at = [], 0
        for batch, slab, n, s0, s1, part, parts, split in head.tolist():
            tasks.append(
                BatchTask(
                    batch, slab, indices[at : at + n], (s0, s1), part=part, parts=parts, split=split
                )
            )
            at += n
        return tasks
    if magic == RESULTS:
        rows = np.frombuffer(data, np.float64, offset=4).reshape(-1, _RESULT_WORDS)
        ints = rows[:, [0, 1, 2, 5, 6, 7, 8]].astype(np.int64).tolist()
        return [
            BatchResult(
                b,
                s,
                n,
                {},
                {"read": r, "decode": d, "bytes": nb, "decompressed": z},
                part=k,
                parts=m,
            )
            for (b, s, n, nb, z, k, m), (r, d) in zip(ints, rows[:, 3:5].tolist())
        ]
    return pickle.loads(data)
