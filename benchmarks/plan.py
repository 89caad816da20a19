"""Does starting an epoch cost the same for 10^3 and 10^9 samples? How fast is the keyed
permutation, and how well does each plan mode shuffle?

1. Start-up: for N = 10^3 .. 10^9, global and block mode (1024 records per block), each in a
   fresh process: time to build an EpochPlan (batch 256, 8 ranks) and get its first batch, cold
   (the first call in the process) and warm (median of 5); peak memory as tracemalloc sees it
   (numpy arrays) and as the kernel does (peak RSS minus RSS before, which also counts the
   C++ core's buffers). The block layout (one int64 per block) is the input, built beforehand:
   it comes from the shards' indexes. Target: < 100 ms and < 50 MB at 10^9.
2. Throughput of _core.permute / permute_range over 1M positions, and of the Python wrappers.
3. Shuffle quality on 1,024,000 samples of 1000 classes stored in sorted order (so with 1024
   records per block, every block is one class): mean |delta source index| between consecutive
   samples / N (a random order: 1/3), distinct classes and blocks per batch of 256 (random:
   226 classes).

    python benchmarks/plan.py [--max-exp 9] [--repeat 5]

Results: tables on stdout and benchmarks/results/plan.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from fastload import _core  # noqa: E402
from fastload.plan import BlockShuffle, EpochPlan, Permutation  # noqa: E402

RESULTS = os.path.join(HERE, "results", "plan.json")
BATCH, WORLD, PER_BLOCK = 256, 8, 1024
TARGET_MS, TARGET_MB = 100, 50


def blocks_for(n: int) -> np.ndarray:
    sizes = np.full(-(-n // PER_BLOCK), PER_BLOCK, dtype=np.int64)
    sizes[-1] = n - PER_BLOCK * (sizes.size - 1)
    return sizes


def start_epoch(n: int, mode: str, blocks, seed: int = 0) -> np.ndarray:
    plan = EpochPlan(
        n, batch_size=BATCH, seed=seed, rank=3, world_size=WORLD, mode=mode, blocks=blocks
    )
    return plan.batch(0)


def kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(n: int, mode: str, repeat: int) -> dict:
    """One (N, mode) start-up measurement, in a process of its own."""
    blocks = blocks_for(n) if mode == "block" else None
    gc.collect()
    try:  # reset the peak-RSS mark so that VmHWM measures this call alone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    rss0 = kib("VmRSS")
    t0 = time.perf_counter()
    start_epoch(n, mode, blocks)
    cold = time.perf_counter() - t0
    rss_peak = kib("VmHWM") - rss0
    tracemalloc.start()
    start_epoch(n, mode, blocks, seed=1)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    warm = []
    for i in range(repeat):
        t0 = time.perf_counter()
        start_epoch(n, mode, blocks, seed=2 + i)
        warm.append(time.perf_counter() - t0)
    return {
        "n": n,
        "mode": mode,
        "cold_ms": cold * 1e3,
        "warm_ms": float(np.median(warm)) * 1e3,
        "tracemalloc_peak_mb": traced / 2**20,
        "rss_peak_delta_mb": rss_peak / 1024,
        "layout_mb": 0 if blocks is None else blocks.nbytes / 2**20,
    }


def startup(max_exp: int, repeat: int) -> list:
    rows = []
    for e in range(3, max_exp + 1):
        for mode in ("global", "block"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(10**e), mode, "--repeat", str(repeat)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def throughput(repeat: int) -> dict:
    m, n = 1_000_000, 10**9
    pos = np.arange(0, n, n // m, dtype=np.uint64)[:m]
    perm = Permutation(n, seed=1)
    blocks = BlockShuffle(blocks_for(n), seed=1)
    ipos = pos.astype(np.int64)
    calls = {
        "_core.permute (n=1e9)": lambda: _core.permute(n, 7, pos),
        "_core.permute (n=2^29+1: most cycle-walking)": lambda: _core.permute(
            2**29 + 1, 7, pos // 2
        ),
        "_core.permute_range (n=1e9)": lambda: _core.permute_range(n, 7, 0, m),
        "Permutation[positions] (n=1e9)": lambda: perm[ipos],
        "BlockShuffle[positions] (n=1e9, 1M consecutive)": lambda: blocks[np.arange(m)],
    }
    out = {name: m / timed(fn, repeat) for name, fn in calls.items()}
    plans = {
        mode: EpochPlan(
            n,
            batch_size=BATCH,
            seed=1,
            rank=0,
            world_size=WORLD,
            mode=mode,
            blocks=blocks_for(n) if mode == "block" else None,
        )
        for mode in ("global", "block")
    }
    js = np.random.default_rng(0).integers(0, plans["global"].num_batches, 200)
    for mode, plan in plans.items():
        out[f"EpochPlan.batch(j), {mode} (batches/s)"] = 200 / timed(
            lambda p=plan: [p.batch(int(j)) for j in js], repeat
        )
    return out


def quality() -> list:
    n, classes = 1_024_000, 1000
    label = np.arange(n) // (n // classes)  # sorted by class: the worst case for locality
    block = np.arange(n) // PER_BLOCK
    cases = [("none (storage order)", "global", False, None)]
    cases += [("global", "global", True, None)]
    cases += [(f"block, window {w}", "block", True, w) for w in (1, 4, 16, 64)]
    rows = []
    for name, mode, shuffle, window in cases:
        plan = EpochPlan(
            n,
            batch_size=BATCH,
            seed=3,
            shuffle=shuffle,
            rank=0,
            world_size=1,
            mode=mode,
            blocks=blocks_for(n),
            window=window or 16,
        )
        order = np.concatenate(list(plan))
        batches = order[: n // BATCH * BATCH].reshape(-1, BATCH)
        rows.append(
            {
                "order": name,
                "mean_abs_delta_over_n": float(np.mean(np.abs(np.diff(order))) / n),
                "classes_per_batch": float(np.mean([np.unique(label[b]).size for b in batches])),
                "blocks_per_batch": float(np.mean([np.unique(block[b]).size for b in batches])),
            }
        )
    expected = classes * (1 - (1 - 1 / classes) ** BATCH)
    rows.append(
        {
            "order": "a uniformly random order (expected)",
            "mean_abs_delta_over_n": 1 / 3,
            "classes_per_batch": expected,
            "blocks_per_batch": (n / PER_BLOCK) * (1 - (1 - PER_BLOCK / n) ** BATCH),
        }
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--max-exp", type=int, default=9, help="largest N is 10**max_exp")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.repeat)))
        return

    rows = startup(args.max_exp, args.repeat)
    print(
        f"Start an epoch: EpochPlan(batch {BATCH}, rank 3 of {WORLD}) + its first batch; "
        f"fresh process per row. Target at 10^9: < {TARGET_MS} ms, < {TARGET_MB} MB"
    )
    print(
        f"{'N':>6s} {'mode':6s} {'cold ms':>8s} {'warm ms':>8s} {'traced MB':>9s} "
        f"{'RSS+ MB':>8s} {'layout MB':>9s}"
    )
    for r in rows:
        print(
            f"1e{len(str(r['n'])) - 1:<4d} {r['mode']:6s} {r['cold_ms']:8.2f} {r['warm_ms']:8.2f} "
            f"{r['tracemalloc_peak_mb']:9.2f} {r['rss_peak_delta_mb']:8.2f} "
            f"{r['layout_mb']:9.2f}"
        )

    rates = throughput(args.repeat)
    print("\nThroughput (positions/s unless stated), median of", args.repeat)
    for name, rate in rates.items():
        print(
            f"{name:52s} {rate / 1e6:8.2f} M"
            if "batches" not in name
            else f"{name:52s} {rate:10.0f}"
        )

    quality_rows = quality()
    print(
        f"\nShuffle quality: 1,024,000 samples, 1000 classes stored sorted, {PER_BLOCK} per "
        f"block, batch {BATCH}"
    )
    print(f"{'order':36s} {'mean|d|/N':>9s} {'classes/batch':>13s} {'blocks/batch':>12s}")
    for r in quality_rows:
        print(
            f"{r['order']:36s} {r['mean_abs_delta_over_n']:9.4f} {r['classes_per_batch']:13.1f} "
            f"{r['blocks_per_batch']:12.1f}"
        )

    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(
            {
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "numpy": np.__version__,
                },
                "batch": BATCH,
                "world_size": WORLD,
                "records_per_block": PER_BLOCK,
                "target": {"ms": TARGET_MS, "mb": TARGET_MB},
                "startup": rows,
                "throughput_per_s": rates,
                "quality": quality_rows,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {os.path.relpath(RESULTS)}")


if __name__ == "__main__":
    main()
