"""Memory of a process tree, read from /proc, and page-cache control of data files.

Standard library only: loader.py, _loaders.py and _scale.py import it, and _loaders.py also
runs from the Streaming venv.

Why PSS: a loader's processes share pages (the interpreter's libraries, shared-memory batch
buffers, memory-mapped data files). Summed RSS counts each shared page once per process that
maps it; summed PSS divides it among them, so the tree's PSS is what the tree costs the machine.
Private (Private_Clean + Private_Dirty) is what one process holds alone: what it would free by
exiting, and what grows when each process copies something for itself.
"""

from __future__ import annotations

import os
import select
import threading
import time

FIELDS = {  # smaps_rollup line -> our name
    "Rss:": "rss",
    "Pss:": "pss",
    "Pss_Anon:": "pss_anon",
    "Pss_File:": "pss_file",
    "Pss_Shmem:": "pss_shmem",
    "Private_Clean:": "private_clean",
    "Private_Dirty:": "private_dirty",
    "Anonymous:": "anonymous",
}


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (threads can fork too: every task's children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # it exited meanwhile
            pass
    return out


def rollup(pid: int) -> dict[str, int]:
    """One process's memory in bytes: rss, pss, pss_anon, pss_file, pss_shmem, private
    (Private_Clean + Private_Dirty), anonymous (its anonymous pages: private memory that is
    not a mapped file's, which is page cache the kernel can drop) and held (Pss_Anon +
    Pss_Shmem: PSS without the file-backed pages). Raises OSError if the process is gone."""
    out = dict.fromkeys(FIELDS.values(), 0)
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name = FIELDS.get(line.split(None, 1)[0])
            if name:
                out[name] = int(line.split()[1]) * 1024
    out["private"] = out.pop("private_clean") + out.pop("private_dirty")
    out["held"] = out["pss_anon"] + out["pss_shmem"]
    return out


def tree_rollup(pid: int) -> dict:
    """The tree's memory at one instant: each measure summed over its processes, and
    ``procs``: each process's own (pid -> rollup)."""
    procs = {}
    for p in tree(pid):
        try:
            procs[p] = rollup(p)
        except OSError:  # it exited meanwhile
            pass
    total = {k: sum(r[k] for r in procs.values()) for k in ("rss", "pss", "private", "held")}
    return {**total, "procs": procs}


# The environment variable naming the pipe a contender writes to when it has its first batch
FIRST_BATCH_FD = "LOADER_BENCH_FIRST_BATCH_FD"


def say_first_batch() -> None:
    """In a contender: tell TreeMemory(start_after=...) that the first batch is in (once;
    nothing where no pipe was given)."""
    fd = os.environ.pop(FIRST_BATCH_FD, None)
    if fd is not None:
        os.write(int(fd), b"1")
        os.close(int(fd))


class TreeMemory(threading.Thread):
    """Samples a process tree's memory every ``interval`` s (reading smaps_rollup costs a few
    ms per process: every 0.2 s it takes ~3% of a core from a 3-process contender) and keeps
    the timeline: (time.perf_counter(), tree_rollup) pairs. perf_counter is CLOCK_MONOTONIC,
    so the times compare with those the measured process reports for its phases.

    ``start_after``: the read end of a pipe; sampling starts once something can be read
    from it (a byte, or its end when every writer is gone). A contender writes one when it
    has its first batch (_loaders.py): the time to it is then measured with no sampling,
    which took ~11 ms of the two cores' time from a 0.21 s first batch here."""

    def __init__(self, pid: int, interval: float = 0.2, start_after: int | None = None):
        super().__init__(daemon=True)
        self.pid, self.interval, self.start_after = pid, interval, start_after
        self.samples: list[tuple[float, dict]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        if self.start_after is not None:
            while not select.select([self.start_after], [], [], 0.1)[0]:
                if self.halt.is_set():
                    return
        while True:
            sample = tree_rollup(self.pid)
            if sample["procs"]:
                self.samples.append((time.perf_counter(), sample))
            if self.halt.wait(self.interval):
                return

    def stop(self) -> None:
        self.halt.set()
        self.join()

    def peak(self) -> dict:
        """Each summed measure's highest value at one instant (not a sum of per-process
        peaks), and the most processes seen at once."""
        return summary(self.samples, max)

    def between(self, start: float, end: float) -> dict:
        """Each summed measure's median over the samples taken in [start, end] (empty when
        none was), and the process breakdown of the sample with the highest PSS there."""
        inside = [(t, s) for t, s in self.samples if start <= t <= end]
        return summary(inside, median)


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def summary(samples: list[tuple[float, dict]], pick) -> dict:
    if not samples:
        return {}
    out = {k: pick([s[k] for _, s in samples]) for k in ("rss", "pss", "private", "held")}
    out["procs"] = max(len(s["procs"]) for _, s in samples)
    out["samples"] = len(samples)
    top = max(samples, key=lambda ts: ts[1]["pss"])[1]
    out["per_process"] = [top["procs"][p] for p in sorted(top["procs"])]
    return out


def files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]


def drop_page_cache(path: str) -> int:
    """Asks the kernel to drop the cached pages of every file under ``path``
    (POSIX_FADV_DONTNEED: no root needed; pages a process has mapped stay, and none of ours
    is running then). Returns the bytes of the files."""
    size = 0
    for p in files_under(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return size


def warm_page_cache(path: str) -> int:
    """Reads every file under ``path`` once, so a run starts from a warm page cache."""
    size = 0
    for p in files_under(path):
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                size += len(chunk)
    return size
