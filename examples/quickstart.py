"""Convert a small sample image dataset and read it back in training order, printing throughput.

    python examples/quickstart.py [--images 2000] [--workdir /tmp/fastload-quickstart]

1. makes an ImageNet-like folder of JPEGs (class subfolders),
2. converts it with ``fastload convert`` (parallel, checksummed, sharded),
3. verifies every checksum with ``fastload verify``,
4. reads it in shuffled batches of 256 (records/s and MB/s) and decodes one batch's images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

import fastload


def make_image_folder(root: str, n: int, classes: int = 10, seed: int = 0) -> None:
    """JPEGs with smooth gradients and noise, so their sizes resemble photos."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:320].astype(np.float32)
    for i in range(n):
        folder = os.path.join(root, f"class_{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        a, b, c = rng.uniform(0.01, 0.05, 3)
        base = np.stack([np.sin(x * a + i), np.cos(y * b), np.sin((x + y) * c)], axis=-1)
        pixels = (base * 90 + 128 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"img_{i:06d}.jpg"), quality=90)


def run(*args: str) -> None:
    print("$ fastload", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "fastload", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "fastload-quickstart"))
    args = parser.parse_args()
    src, dst = os.path.join(args.workdir, "images"), os.path.join(args.workdir, "dataset")
    if not os.path.isdir(src):
        print(f"making {args.images} sample JPEGs in {src}", flush=True)
        make_image_folder(src, args.images)
    run("convert", src, dst, "--from", "imagefolder", "--workers", "2", "--overwrite")
    run("verify", dst)
    run("inspect", dst)

    ds = fastload.Dataset(dst)
    order = np.random.default_rng(0).permutation(len(ds))
    start, nbytes = time.perf_counter(), 0
    for i in range(0, len(order), 256):
        batch = ds.get_batch(order[i : i + 256])
        nbytes += sum(len(img.data) for img in batch["image"])
    seconds = time.perf_counter() - start
    print(f"read {len(ds)} records in shuffled batches of 256: {len(ds) / seconds:,.0f} records/s, "
          f"{nbytes / seconds / 1e6:,.0f} MB/s")
    start = time.perf_counter()
    images = [img.decode() for img in batch["image"]]
    print(f"decoded the last batch ({len(images)} images, {images[0].shape}) at "
          f"{len(images) / (time.perf_counter() - start):,.0f} images/s; labels {batch['label'][:8]}")


if __name__ == "__main__":
    main()
