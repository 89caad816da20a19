"""The bytes of the loader's messages between the consumer and its workers.

Most messages are plain: tasks that say which records go into which slab, and results that
say how long that took. Pickling them (dataclasses holding numpy arrays and dicts) cost the
consumer ~5 us per batch each way, which for small batches (a few KB of tokens) was most of
its time per batch. So the plain cases travel as one flat numpy array instead:

- tasks: ``TASKS`` magic, then int64 words ``k``, and per task ``batch, slab, n, seed0,
  seed1, part, parts, by_block`` (seeds as uint64 bit patterns), then all the tasks' indices
  back to back;
- results: ``RESULTS`` magic, then per result float64 ``batch, slab, samples, read, decode,
  bytes, decompressed, part, parts``.

Anything else (a task that carries a new slab's handle, seeds that are not two ints in
[0, 2**64), a result with an error, listed fields, remote-read counters or skipped rows, the
``None`` that stops a worker) is pickled as before; the receiver tells the two apart by the
magic (a pickle never starts with it).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

__all__ = ["encode_tasks", "encode_results", "decode"]

TASKS = b"FLt2"
RESULTS = b"FLr2"
_U64 = (1 << 64) - 1
_TASK_WORDS = 8
_RESULT_WORDS = 9


def _pickle(obj: Any) -> bytes:
    from multiprocessing.reduction import ForkingPickler

    return bytes(ForkingPickler.dumps(obj))  # shares tensors by handle, as Connection.send does


def encode_tasks(tasks: list) -> bytes:
    """``tasks`` (a list of Task, or None) as message bytes."""
    if tasks is None or any(t.new_slab is not None or len(t.rng_seed) != 2 for t in tasks):
        return _pickle(tasks)
    try:  # a seed that is not an int in [0, 2**64) raises here: pickled instead
        head = np.array(
            [
                (t.batch, t.slab, len(t.indices), *t.rng_seed, t.part, t.parts, t.by_block)
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
    """``results`` (a list of Result) as message bytes."""
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
        from .worker import Task

        k = int(np.frombuffer(data, np.int64, 1, 4)[0])
        head = np.frombuffer(data, np.uint64, k * _TASK_WORDS, 12).reshape(k, _TASK_WORDS)
        indices = np.frombuffer(data, np.int64, offset=12 + head.nbytes)
        tasks, at = [], 0
        for batch, slab, n, s0, s1, part, parts, by_block in head.tolist():
            tasks.append(
                Task(
                    batch,
                    slab,
                    indices[at : at + n],
                    (s0, s1),
                    part=part,
                    parts=parts,
                    by_block=bool(by_block),
                )
            )
            at += n
        return tasks
    if magic == RESULTS:
        from .worker import Result

        rows = np.frombuffer(data, np.float64, offset=4).reshape(-1, _RESULT_WORDS)
        ints = rows[:, [0, 1, 2, 5, 6, 7, 8]].astype(np.int64).tolist()
        return [
            Result(
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
