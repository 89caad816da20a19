"""Where should a loader that stays on the CPU finish its batches: in the workers or in the
training process? Measured side by side in one run, on this machine's cores.

  images   ImageDecode(224, train=True, normalize="imagenet", dtype=torch.bfloat16), batches of
           256 ImageNet-sized JPEGs: finished by the workers into the slab (the loader's
           choice) vs by the training process into a buffer of its own; and plain uint8 pixels
           (no finishing) for scale. Images/s, and the training process's own seconds per batch
           (its share of the finishing).
  tokens   TokenDecode(dtype=torch.int64, shift=True) on rows of 2049 uint16 tokens, batch 16:
           finished by the workers into the slab (the loader's choice) vs by the training
           process into tensors of its own; and the rows as they are (no finishing) for scale.

    python benchmarks/finish_place.py [--images N] [--epochs E] [--workers W]

Figures are ratios of runs made here, now; on a machine shared with other work they are noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing
sys.path.insert(0, HERE)

import psutil  # noqa: E402
import torch  # noqa: E402
from gpu import photo_jpegs  # noqa: E402

import fastload  # noqa: E402
import fastload.loader.layout as layout_module  # noqa: E402


def run(path: str, decode: dict, batch: int, workers: int, epochs: int, key: str) -> dict:
    """Over ``epochs`` epochs, after one that warms the workers and slabs: samples/s, and CPU
    milliseconds per batch of the training process (``consumer``) and of the workers. On a
    machine shared with other work the CPU times are steadier than the rate: they are what
    each placement costs, and the rate of a machine the workers saturate follows their sum."""
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=batch,
            shuffle=True,
            seed=0,
            num_workers=workers,
            persistent_workers=True,
            drop_last=True,
            decode=decode,
        )
        for b in loader:
            if b[key].shape[0] != batch:
                raise AssertionError(f"a batch of {b[key].shape[0]}, not {batch}")
        me = psutil.Process()
        kids = me.children()
        cpu0, kids0 = sum(me.cpu_times()[:2]), sum(sum(k.cpu_times()[:2]) for k in kids)
        t0 = time.perf_counter()
        n = batches = 0
        for _ in range(epochs):
            for b in loader:
                n += len(b[key])
                batches += 1
        seconds = time.perf_counter() - t0
        cpu = sum(me.cpu_times()[:2]) - cpu0
        kid = sum(sum(k.cpu_times()[:2]) for k in kids) - kids0
        loader.close()
    return {
        "rate": n / seconds,
        "consumer_ms": cpu / batches * 1e3,
        "workers_ms": kid / batches * 1e3,
    }


def summary(runs: list[dict]) -> dict:
    """The best rate, and the median CPU times, of repeated runs."""
    return {
        "rate": max(r["rate"] for r in runs),
        "consumer_ms": statistics.median(r["consumer_ms"] for r in runs),
        "workers_ms": statistics.median(r["workers_ms"] for r in runs),
    }


def show(name: str, r: dict, unit: str) -> None:
    total = r["consumer_ms"] + r["workers_ms"]
    print(
        f"  {name:9} {r['rate']:8.0f} {unit}/s   CPU ms a batch: training process "
        f"{r['consumer_ms']:6.2f}, workers {r['workers_ms']:6.2f}, total {total:6.2f}"
    )


def consumer_finish_seconds(spec, batch: int) -> float:
    """One batch finished by the consumer's pass alone (what it adds to the training process
    per batch)."""
    pixels = torch.randint(0, 256, (batch, *spec.pixel_shape), dtype=torch.uint8)
    out = torch.empty((batch, *spec.shape), dtype=spec.dtype)
    spec.finish(pixels, out=out)
    t0 = time.perf_counter()
    for _ in range(5):
        spec.finish(pixels, out=out)
    return (time.perf_counter() - t0) / 5


def images(root: str, n: int, workers: int, epochs: int) -> None:
    data, _, _ = photo_jpegs(n)
    path = os.path.join(root, "images")
    with fastload.Writer(path, {"image": "image", "label": "int64"}) as w:
        for i, jpeg in enumerate(data):
            w.write({"image": jpeg, "label": i})
    bf16 = fastload.ImageDecode(224, train=True, normalize="imagenet", dtype=torch.bfloat16)
    plain = fastload.ImageDecode(224, train=True)
    results: dict[str, list] = {"workers": [], "consumer": [], "uint8": []}
    for _ in range(2):  # alternated, so a change in the machine's load hits each alike
        for name in results:
            layout_module.IMAGES_FINISHED_IN_WORKERS = name != "consumer"
            spec = plain if name == "uint8" else bf16
            results[name].append(run(path, {"image": spec}, 256, workers, epochs, "image"))
    layout_module.IMAGES_FINISHED_IN_WORKERS = True
    best = {name: summary(runs) for name, runs in results.items()}
    print(f"images, batch 256, 224x224 bf16, {workers} workers, {n} images x {epochs} epochs")
    for name, r in best.items():
        show(name, r, "images")
    print(
        f"  the consumer's finishing pass alone: {consumer_finish_seconds(bf16, 256) * 1e3:.1f} "
        "ms a batch"
    )


def tokens(root: str, workers: int, epochs: int) -> None:
    path = os.path.join(root, "tokens")
    rng = np.random.default_rng(0)
    with fastload.Writer(path, {"tokens": "uint16[2049]"}) as w:
        for _ in range(20_000):
            w.write({"tokens": rng.integers(0, 50_000, 2049).astype(np.uint16)})
    runs: dict[str, list] = {"workers": [], "consumer": [], "uint16": []}
    for _ in range(3):
        for name in runs:
            layout_module.TOKENS_FINISHED_IN_WORKERS = name != "consumer"
            decode = {} if name == "uint16" else {"tokens": fastload.TokenDecode()}
            runs[name].append(run(path, decode, 16, workers, epochs, "tokens"))
    layout_module.TOKENS_FINISHED_IN_WORKERS = True
    best = {name: summary(rs) for name, rs in runs.items()}
    print(f"tokens, batch 16 x 2049, {workers} workers, 20000 rows x {epochs} epochs")
    for name, r in best.items():
        show(name, r, "rows")
    spec = fastload.TokenDecode()
    rows = torch.from_numpy(rng.integers(0, 50_000, (16, 2049)).astype(np.uint16))
    spec.finish(rows)
    t0 = time.perf_counter()
    for _ in range(200):
        spec.finish(rows)
    per = (time.perf_counter() - t0) / 200
    print(f"  the finishing pass alone: {per * 1e6:.0f} us a batch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        images(root, args.images, args.workers, args.epochs)
        tokens(root, args.workers, args.epochs)


if __name__ == "__main__":
    main()
