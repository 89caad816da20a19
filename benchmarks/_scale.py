"""loader.py's scale row: what a dataset of many small records costs each process.

    python _scale.py DATASET [--batch 16] [--batches 3000] [--workers 2]

Prints one JSON line: records, shards and bytes on disk per record; the private memory
(Private_Clean + Private_Dirty, from /proc/PID/smaps_rollup; and its anonymous part, without
pages of mapped files, which the page cache can drop) of this process after its imports,
after opening the dataset and after one ``ds[i]`` in each shard; then the highest private
memory of each process of a loader pass (``shuffle=True, seed=0``: records from every
shard, in random order) of ``--batches`` batches, the training process and each worker apart.
The block cache's budget is printed beside them: what a process may hold by design.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import _procmem
import numpy as np

MB = 1e6


class PeakPrivate(threading.Thread):
    """The highest private memory of each process of this tree, sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[int, dict] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            for pid, mem in _procmem.tree_rollup(os.getpid())["procs"].items():
                old = self.peak.get(pid)
                if old is None or mem["private"] > old["private"]:
                    self.peak[pid] = mem
            if self.halt.wait(0.2):
                return

    def stop(self) -> dict[int, dict]:
        self.halt.set()
        self.join()
        return self.peak


def private_mb(kind: str = "private") -> float:
    return _procmem.rollup(os.getpid())[kind] / MB


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in _procmem.files_under(path))


def index_bytes(path: str) -> int | None:
    """The bytes of the shards' index sections, as their trailers say (None if the shards'
    trailer is not one this script knows)."""
    from fastload.format import spec

    total = 0
    for p in _procmem.files_under(path):
        if not p.endswith(spec.SHARD_SUFFIX):
            continue
        with open(p, "rb") as f:
            f.seek(-spec.TRAILER_SIZE, os.SEEK_END)
            trailer = np.frombuffer(f.read(spec.TRAILER_SIZE), spec.TRAILER_DTYPE)[0]
        if trailer["magic"] != spec.MAGIC:
            return None
        total += int(trailer["index_size"])
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=3000)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()

    import torch  # noqa: F401  (the loader's own import, before the first figure)

    import fastload
    from fastload.format.decoded import DEFAULT_DECODED_LIMIT

    out = {"imports_private_mb": private_mb(), "imports_anonymous_mb": private_mb("anonymous")}
    t = time.perf_counter()
    ds = fastload.Dataset(a.data)
    out["open_s"] = time.perf_counter() - t
    out["open_private_mb"] = private_mb()
    n, shards = len(ds), ds.shards
    out.update(records=n, shards=len(shards), disk_bytes=disk_bytes(a.data))
    out["disk_bytes_per_record"] = out["disk_bytes"] / n
    index = index_bytes(a.data)
    out["index_bytes_per_record"] = None if index is None else index / n
    rng = np.random.default_rng(0)
    starts = np.cumsum([0] + [s.records for s in shards])
    t = time.perf_counter()
    for s in range(len(shards)):
        ds[int(rng.integers(starts[s], starts[s + 1]))]
    out["one_read_per_shard_s"] = time.perf_counter() - t
    out["read_private_mb"] = private_mb()
    out["read_anonymous_mb"] = private_mb("anonymous")
    del ds

    watch = PeakPrivate()
    watch.start()
    loader = fastload.DataLoader(
        fastload.Dataset(a.data),
        batch_size=a.batch,
        shuffle=True,
        seed=0,
        num_workers=a.workers,
    )
    t = time.perf_counter()
    drawn = 0
    for _ in loader:
        drawn += 1
        if drawn == a.batches:
            break
    out["pass_s"] = time.perf_counter() - t
    time.sleep(0.3)  # one more sample with every worker alive
    peaks = watch.stop()
    me = os.getpid()
    out["pass_batches"] = drawn
    main = peaks.pop(me)
    out["pass_main_private_mb"] = main["private"] / MB
    out["pass_main_anonymous_mb"] = main["anonymous"] / MB
    out["pass_worker_private_mb"] = sorted(m["private"] / MB for m in peaks.values())
    out["pass_worker_anonymous_mb"] = sorted(m["anonymous"] / MB for m in peaks.values())
    out["block_cache_budget_mb"] = DEFAULT_DECODED_LIMIT / MB
    out["versions"] = {"fastload": fastload.__version__}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
