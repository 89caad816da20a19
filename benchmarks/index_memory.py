"""What a dataset of many small fixed-size records costs each process, and its index on disk.

    python benchmarks/index_memory.py [--records 20000000] [--reads 20000] [--quick]

A generated dataset of ``--records`` 16-byte records (8 uint16 tokens) in 5 shards, written
raw and with zstd (convert's default; 1 MiB blocks). For each, in a fresh process: bytes on
disk and bytes of index per record (from the shards' trailers); this process's memory (from
/proc/self/smaps_rollup) after its imports, after one ``ds[i]`` in each shard (every index
opened and checked), after ``--reads`` random ``ds[i]``; then, in another fresh process,
each loader worker's (``shuffle=True``, 2 workers, batch 64) after 300 batches.
Private = Private_Clean + Private_Dirty counts the pages of mapped files that only this
process maps (data read at random: page cache the kernel can drop; dirty while the freshly
written file is not yet on disk), so its anonymous part (what the process holds of its own)
is reported beside it. The decompressed-block cache's budget (zstd) is printed too: what a
process may hold by design. Results in
benchmarks/results/index_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, ".data")
RESULTS = os.path.join(HERE, "results", "index_memory.json")
SHARDS = 5
MB = 1 << 20


def rollup(pid: int | str = "self") -> dict:
    """Memory of a process in MiB: private (clean + dirty), its dirty and anonymous parts."""
    kb = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                kb[key] = int(value.split()[0])
    return {
        "private": (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024,
        "private_dirty": kb["Private_Dirty"] / 1024,
        "anonymous": kb["Anonymous"] / 1024,
        "rss": kb["Rss"] / 1024,
    }


def make(records: int, compression: str) -> str:
    import numpy as np

    import fastload

    path = os.path.join(DATA, f"index-memory-{records}-{compression}")
    if os.path.exists(os.path.join(path, "manifest.json")):
        return path
    shard_size = records * 16 // SHARDS + 4096
    step = 1 << 21
    rng = np.random.default_rng(0)  # tokens of a 4,096-word vocabulary: zstd saves ~25%
    with fastload.Writer(
        path, {"t": "uint16[8]"}, compression=compression, shard_size=shard_size, overwrite=True
    ) as w:
        for a in range(0, records, step):
            m = min(step, records - a)
            w.write_columns({"t": rng.integers(0, 4096, (m, 8), dtype=np.uint16)})
    return path


def measure(path: str, reads: int) -> dict:
    """In this (fresh) process: the figures of one dataset."""
    import numpy as np
    import torch  # noqa: F401  (the loader's import, before the first figure)

    import fastload
    from fastload.format import spec
    from fastload.format.decoded import DEFAULT_DECODED_LIMIT

    out: dict = {"imports": rollup()}
    ds = fastload.Dataset(path)
    n = len(ds)
    disk = index = 0
    for s in ds.shards:
        p = os.path.join(path, s.path)
        disk += os.path.getsize(p)
        with open(p, "rb") as f:
            f.seek(-spec.TRAILER_SIZE, os.SEEK_END)
            index += int(
                np.frombuffer(f.read(spec.TRAILER_SIZE), spec.TRAILER_DTYPE)[0]["index_size"]
            )
    out.update(records=n, shards=len(ds.shards), disk_bytes_per_record=disk / n)
    out["index_bytes_per_record"] = index / n
    t = time.perf_counter()
    for s in range(len(ds.shards)):
        ds[int(ds.record_starts[s]) + 12_345]
    out["one_per_shard_s"] = time.perf_counter() - t
    out["one_per_shard"] = rollup()
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for i in rng.integers(0, n, reads):
        ds[int(i)]
    out["random_reads"], out["random_reads_s"] = reads, time.perf_counter() - t
    out["after_random_reads"] = rollup()
    out["block_cache_budget_mib"] = DEFAULT_DECODED_LIMIT / MB
    return out


def measure_loader(path: str) -> dict:
    """In this (fresh) process, the dataset not read before: a loader's workers after 300
    batches (no page of the data is mapped by this process, so none is shared with it)."""
    import psutil

    import fastload

    loader = fastload.DataLoader(
        fastload.Dataset(path), batch_size=64, shuffle=True, seed=0, num_workers=2
    )
    out: dict = {}
    others = {p.pid for p in psutil.Process().children()}
    for k, _ in enumerate(loader):
        if k == 300:
            workers = [p for p in psutil.Process().children() if p.pid not in others]
            out["workers_after_300_batches"] = [rollup(w.pid) for w in workers]
            out["main_after_300_batches"] = rollup()
            break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=20_000_000)
    p.add_argument("--reads", type=int, default=20_000)
    p.add_argument("--quick", action="store_true", help="500k records, 1000 reads (smoke test)")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one dataset, in a child
    p.add_argument("--loader", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure:
        got = measure_loader(a.measure) if a.loader else measure(a.measure, a.reads)
        print(json.dumps(got))
        return
    if a.quick:
        a.records, a.reads = 500_000, 1000
    rows = {}
    for compression in ("none", "zstd"):
        path = make(a.records, compression)
        child = [sys.executable, __file__, "--measure", path, "--reads", str(a.reads)]
        rows[compression] = r = json.loads(
            subprocess.run(child, check=True, stdout=subprocess.PIPE).stdout
        )
        r.update(
            json.loads(
                subprocess.run(child + ["--loader"], check=True, stdout=subprocess.PIPE).stdout
            )
        )
        print(
            f"{compression}: {r['records']:,} records, {r['disk_bytes_per_record']:.3f} B/record "
            f"on disk, index {r['index_bytes_per_record']:.4f} B/record; private MiB "
            f"imports {r['imports']['private']:.0f}, one ds[i] per shard "
            f"{r['one_per_shard']['private']:.0f} "
            f"(anonymous {r['one_per_shard']['anonymous']:.0f}), "
            f"after {r['random_reads']} random reads {r['after_random_reads']['private']:.0f} "
            f"(anonymous {r['after_random_reads']['anonymous']:.0f}); workers' private dirty "
            + ", ".join(f"{w['private_dirty']:.0f}" for w in r["workers_after_300_batches"])
            + "; workers' private "
            + ", ".join(f"{w['private']:.0f}" for w in r["workers_after_300_batches"])
        )
    if not a.quick:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
