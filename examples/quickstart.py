"""Convert a small sample image dataset and read it back in training order, printing throughput.

    python examples/quickstart.py [--images 2000] [--workdir /tmp/fastload-quickstart]

1. makes an ImageNet-like folder of JPEGs (class subfolders),
2. converts it with ``fastload convert`` (parallel, checksummed, sharded),
3. verifies every checksum with ``fastload verify``,
4. trains-loads it with ``fastload.DataLoader``: shuffled batches of 256, JPEGs decoded,
   randomly cropped to 224 and flipped in 2 worker processes, printing samples/s,
5. saves the loader's position mid-epoch and resumes from it, as after a restart.
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
    parser.add_argument(
        "--workdir", default=os.path.join(tempfile.gettempdir(), "fastload-quickstart")
    )
    args = parser.parse_args()
    src, dst = os.path.join(args.workdir, "images"), os.path.join(args.workdir, "dataset")
    if not os.path.isdir(src):
        print(f"making {args.images} sample JPEGs in {src}", flush=True)
        make_image_folder(src, args.images)
    run("convert", src, dst, "--from", "imagefolder", "--workers", "2", "--overwrite")
    run("verify", dst)
    run("inspect", dst)

    ds = fastload.Dataset(dst)
    loader = fastload.DataLoader(
        ds,
        batch_size=256,
        shuffle=True,
        seed=0,
        num_workers=2,
        drop_last=True,
        persistent_workers=True,
        decode={"image": fastload.ImageDecode(224, train=True)},
    )
    for epoch in range(2):
        loader.set_epoch(epoch)
        start, samples = time.perf_counter(), 0
        for batch in loader:
            samples += len(batch["label"])  # a training step would use batch["image"] here
        seconds = time.perf_counter() - start
        print(
            f"epoch {epoch}: {samples} samples in {seconds:.2f} s, {samples / seconds:,.0f} "
            f"samples/s; batch {tuple(batch['image'].shape)} {batch['image'].dtype}, "
            f"labels {batch['label'][:8].tolist()}"
        )
    stats = loader.stats()
    print(
        f"loader.stats(): {stats['samples_per_s']:,.0f} samples/s, "
        f"data stall {stats['data_stall']:.0%} (this loop does no training work)"
    )

    # Exact resumption: save mid-epoch, restart, continue with nothing repeated or lost.
    loader.set_epoch(2)
    it = iter(loader)
    seen = [next(it)["label"] for _ in range(2)]
    state = loader.state_dict()
    del it
    resumed = fastload.DataLoader(
        ds, batch_size=256, shuffle=True, seed=0, num_workers=2, drop_last=True
    )  # another loader, as after a restart
    resumed.load_state_dict(state)
    rest = sum(len(b["label"]) for b in resumed)
    print(
        f"resumed epoch 2 after {len(seen)} batches: {rest} more samples "
        f"({len(seen) * 256 + rest} of {len(loader) * 256}); the state: epoch {state['epoch']}, "
        f"{state['consumed']} samples consumed, dataset {state['fingerprint']}"
    )
    loader.close()


if __name__ == "__main__":
    main()
