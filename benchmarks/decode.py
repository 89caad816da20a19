"""How fast does fastload.decode turn JPEGs into a 224x224 training batch, next to the usual ways?

ImageNet-like JPEGs (~110 KB, 500x375..640x480, quality 90: benchmarks/.data/images-3000 made by
benchmarks/convert.py if it is there, else generated the same way), RandomResizedCrop(224) +
horizontal flip, uint8 HWC out. One core (the process pinned to one CPU where the OS allows):

  A   PIL, torchvision-style: Image.open().convert('RGB'), crop, resize(224, BILINEAR), flip
  B*  Pillow-only attempts at decoding less: draft (DCT-scaled decode) + crop/box/reduce
  F*  fastload.decode.decode_batch_into with each JPEG backend x resize backend, and with each
      JPEG's entropy index (what the Writer stores by default: only a crop's MCUs are decoded)
  S1  simplejpeg whole-image decode + the same PIL crop/resize as A
  D*  NVIDIA DALI CPU pipelines, num_threads=1 (if nvidia-dali is installed)

then two cores: A in 2 processes (the "two cores' worth" the loader is held to), fastload with
num_threads=2 and in 2 processes, DALI with num_threads=2. Quality: mean absolute difference
(levels of 255) of each path's output from A's for the same crop and flip. Eval: resize 256 +
center crop 224 (PIL) against fastload's one-step eval crop.

    python benchmarks/decode.py [--images 300] [--repeat 5] [--batch 50] [--quick] [--no-dali]

Results: a table on stdout and benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import math
import os
import platform
import sys
import time
from multiprocessing import get_context
from typing import Callable

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

import torch  # noqa: E402

from fastload import _core  # noqa: E402
from fastload.decode import (  # noqa: E402
    available_jpeg_backends,
    available_resize_backends,
    dct_scale,
    decode_batch_into,
    draw_batch_params,
)

DATA = os.path.join(HERE, ".data", "images-3000")
RESULTS = os.path.join(HERE, "results", "decode.json")
SIZE = 224
SEED = 2024
BIL = Image.Resampling.BILINEAR
FLIP = Image.Transpose.FLIP_LEFT_RIGHT

# Set in main() before any worker process forks (they inherit them).
IMAGES: list[bytes] = []
INDEXES: list = []  # each JPEG's entropy index, as a fastload dataset stores it
HEIGHTS: list[int] = []
WIDTHS: list[int] = []
PARAMS: list = []


# --------------------------------------------------------------------------- data


def load_images(count: int) -> list[bytes]:
    files = sorted(glob.glob(os.path.join(DATA, "*", "*.jpg")))
    if len(files) >= count:
        out = []
        for f in files[:count]:
            with open(f, "rb") as fh:
                out.append(fh.read())
        return out
    print(f"{DATA} missing or short: generating {count} JPEGs like benchmarks/convert.py does")
    from convert import make_jpeg  # same generator, same seed

    with get_context("fork").Pool(os.cpu_count()) as pool:
        return pool.map(make_jpeg, range(count), chunksize=8)


# ----------------------------------------------------------------------- variants


def _finish(im: Image.Image, flip: bool, out: np.ndarray) -> None:
    if flip:
        im = im.transpose(FLIP)
    out[...] = np.asarray(im)


def pil_baseline(i: int, out: np.ndarray) -> None:
    """A: what torchvision's RandomResizedCrop on a PIL image does."""
    (top, left, h, w), flip = PARAMS[i]
    im = Image.open(io.BytesIO(IMAGES[i])).convert("RGB")
    _finish(im.crop((left, top, left + w, top + h)).resize((SIZE, SIZE), BIL), flip, out)


def _drafted(i: int):
    (top, left, h, w), flip = PARAMS[i]
    im = Image.open(io.BytesIO(IMAGES[i]))
    s = dct_scale(h, w, SIZE, SIZE)
    k = 1.0
    if s > 1:
        width = im.width
        drafted = im.draft("RGB", (width // s, im.height // s))
        k = width / drafted[1][2] if drafted else 1.0
    im = im.convert("RGB")
    return im, (left / k, top / k, (left + w) / k, (top + h) / k), flip


def pil_draft_crop(i: int, out: np.ndarray) -> None:
    """B1: draft + crop + resize."""
    im, box, flip = _drafted(i)
    box = tuple(int(round(v)) for v in box)
    _finish(im.crop(box).resize((SIZE, SIZE), BIL), flip, out)


def pil_draft_box(i: int, out: np.ndarray) -> None:
    """B2: draft + resize(box=) (no separate crop copy)."""
    im, box, flip = _drafted(i)
    _finish(im.resize((SIZE, SIZE), BIL, box=box), flip, out)


def pil_draft_box_gap(i: int, out: np.ndarray) -> None:
    """B3: draft + resize(box=, reducing_gap=2) (Pillow first box-reduces by an integer)."""
    im, box, flip = _drafted(i)
    _finish(im.resize((SIZE, SIZE), BIL, box=box, reducing_gap=2.0), flip, out)


def pil_reduce(i: int, out: np.ndarray) -> None:
    """B4: full decode, crop, Image.reduce by the integer factor, resize the rest."""
    (top, left, h, w), flip = PARAMS[i]
    im = Image.open(io.BytesIO(IMAGES[i])).convert("RGB").crop((left, top, left + w, top + h))
    f = int(min(h, w) // SIZE)
    if f >= 2:
        im = im.reduce(f)
    _finish(im.resize((SIZE, SIZE), BIL), flip, out)


def simplejpeg_plain(i: int, out: np.ndarray) -> None:
    """S1: simplejpeg whole-image decode, then A's crop + resize."""
    import simplejpeg

    (top, left, h, w), flip = PARAMS[i]
    im = Image.fromarray(simplejpeg.decode_jpeg(IMAGES[i], "RGB"))
    _finish(im.crop((left, top, left + w, top + h)).resize((SIZE, SIZE), BIL), flip, out)


def per_image(fn: Callable) -> Callable[[np.ndarray, int, int], None]:
    def run(out: np.ndarray, lo: int, hi: int) -> None:
        for i in range(lo, hi):
            fn(i, out[i])

    return run


def fastload_batch(
    jpeg: str,
    resize: str,
    layout: str = "HWC",
    threads: int = 1,
    batch: int = 50,
    indexed: bool = False,
) -> Callable[[np.ndarray, int, int], None]:
    def run(out: np.ndarray, lo: int, hi: int) -> None:
        # Same seed as PARAMS: decode_batch_into draws the same crops and flips, in order.
        rng = np.random.default_rng(SEED)
        draw_batch_params(HEIGHTS[:lo], WIDTHS[:lo], (SIZE, SIZE), train=True, rng=rng)
        for b in range(lo, hi, batch):
            e = min(b + batch, hi)
            decode_batch_into(
                IMAGES[b:e],
                HEIGHTS[b:e],
                WIDTHS[b:e],
                out[b:e],
                train=True,
                rng=rng,
                layout=layout,
                num_threads=threads,
                jpeg_backend=jpeg,
                resize_backend=resize,
                indexes=INDEXES[b:e] if indexed else None,
            )

    run.layout = layout
    return run


# --------------------------------------------------------------------------- DALI


def dali_runner(fused: bool, threads: int, batch: int) -> Callable | None:
    try:
        from nvidia.dali import fn, pipeline_def, types
    except Exception:
        return None

    @pipeline_def(
        batch_size=batch,
        num_threads=threads,
        device_id=None,
        seed=SEED,
        prefetch_queue_depth=1,
        exec_async=False,
        exec_pipelined=False,
    )
    def pipe():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
        if fused:  # DALI's own "decode less": ROI decode of the random crop, then resize
            images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
            images = fn.resize(images, size=(SIZE, SIZE))
        else:
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            images = fn.random_resized_crop(images, size=(SIZE, SIZE))
        return fn.flip(images, horizontal=fn.random.coin_flip())

    p = pipe()
    p.build()
    arrays = [np.frombuffer(d, np.uint8) for d in IMAGES]

    def run(out: np.ndarray, lo: int, hi: int) -> None:
        for b in range(lo, hi, batch):
            e = min(b + batch, hi)
            chunk = arrays[b:e]
            if len(chunk) < batch:  # the pipeline's batch size is fixed; pad, drop extras
                chunk = chunk + arrays[: batch - len(chunk)]
            p.feed_input("jpegs", chunk)
            (res,) = p.run()
            out[b:e] = np.asarray(res.as_tensor())[: e - b]

    return run


# ----------------------------------------------------------------------- measuring


def pin_one_cpu() -> set | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    return before


def time_variants(
    variants: dict[str, Callable], n: int, repeat: int
) -> dict[str, dict[str, float]]:
    """Best-of-``repeat`` rate of each variant, rounds interleaved. ``wall``: images per
    second of elapsed time; ``cpu``: images per CPU-second this process (and any worker
    processes) used, which other people's jobs on a shared machine disturb far less."""
    outs = {k: np.zeros(_shape(v, n), np.uint8) for k, v in variants.items()}
    for name, run in variants.items():  # warm-up (imports, scratch buffers, DALI build)
        run(outs[name], 0, min(n, 20))
    wall = {k: math.inf for k in variants}
    cpu = {k: math.inf for k in variants}
    for _ in range(repeat):
        for name, run in variants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            extra = run(outs[name], 0, n)
            t1, c1 = time.perf_counter(), time.process_time()
            wall[name] = min(wall[name], t1 - t0)
            cpu[name] = min(cpu[name], c1 - c0 + (extra or 0.0))
    return {k: {"wall": n / wall[k], "cpu": n / cpu[k]} for k in variants}


def _shape(run, n):
    return (n, 3, SIZE, SIZE) if getattr(run, "layout", "HWC") == "CHW" else (n, SIZE, SIZE, 3)


_WORKER_RUN: Callable | None = None
_WORKER_OUT: np.ndarray | None = None


def _worker(args) -> float:
    """Runs one part in a pool process; returns the CPU seconds it took."""
    global _WORKER_OUT
    lo, hi = args
    if _WORKER_OUT is None or _WORKER_OUT.shape[0] < hi:
        _WORKER_OUT = np.zeros((len(IMAGES), SIZE, SIZE, 3), np.uint8)
    c0 = time.process_time()
    _WORKER_RUN(_WORKER_OUT, lo, hi)
    return time.process_time() - c0


class Processes:
    """``run`` split over ``procs`` forked, single-threaded processes (a pool kept warm)."""

    def __init__(self, run: Callable, n: int, procs: int = 2) -> None:
        global _WORKER_RUN
        _WORKER_RUN = run  # inherited by the fork below
        bounds = [n * k // procs for k in range(procs + 1)]
        self.parts = [(bounds[k], bounds[k + 1]) for k in range(procs)]
        self.pool = get_context("fork").Pool(procs)
        self.pool.map(_worker, [(lo, min(lo + 10, hi)) for lo, hi in self.parts], chunksize=1)

    def __call__(self, out: np.ndarray, lo: int, hi: int) -> float:
        return sum(self.pool.map(_worker, self.parts, chunksize=1))

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def _zlib_work(_=None) -> None:
    import zlib

    data = np.random.default_rng(0).integers(0, 256, 4_000_000, dtype=np.uint8).tobytes()
    for _ in range(3):
        zlib.compress(data, 1)


def core_check(repeat: int) -> dict[str, float]:
    """How much of 2 cores this (shared, noisy) machine gave just now: zlib.compress (which
    releases the GIL) on 2 threads and in 2 processes, speedup over doing both in turn."""
    import threading

    best = {"serial": math.inf, "threads": math.inf, "processes": math.inf}
    with get_context("fork").Pool(2) as pool:
        pool.map(_zlib_work, [0, 1])
        for _ in range(repeat):
            t0 = time.perf_counter()
            _zlib_work()
            _zlib_work()
            best["serial"] = min(best["serial"], time.perf_counter() - t0)
            ts = [threading.Thread(target=_zlib_work) for _ in range(2)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            best["threads"] = min(best["threads"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            pool.map(_zlib_work, [0, 1], chunksize=1)
            best["processes"] = min(best["processes"], time.perf_counter() - t0)
    return {
        "threads": best["serial"] / best["threads"],
        "processes": best["serial"] / best["processes"],
    }


def outputs(run: Callable, n: int) -> np.ndarray:
    out = np.zeros(_shape(run, n), np.uint8)
    run(out, 0, n)
    return out if out.shape[-1] == 3 else out.transpose(0, 2, 3, 1)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def lanczos_reference(i: int) -> np.ndarray:
    (top, left, h, w), flip = PARAMS[i]
    im = Image.open(io.BytesIO(IMAGES[i])).convert("RGB")
    im = im.crop((left, top, left + w, top + h)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.asarray(im.transpose(FLIP) if flip else im)


# ---------------------------------------------------------------------------- eval


def eval_baseline(i: int, out: np.ndarray) -> None:
    """torchvision eval on PIL: Resize(256) (shorter side) then CenterCrop(224)."""
    im = Image.open(io.BytesIO(IMAGES[i])).convert("RGB")
    w, h = im.size
    short = int(SIZE / 0.875)
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    im = im.resize((nw, nh), BIL)
    top, left = int(round((nh - SIZE) / 2.0)), int(round((nw - SIZE) / 2.0))
    out[...] = np.asarray(im.crop((left, top, left + SIZE, top + SIZE)))


def fastload_eval(jpeg: str, batch: int = 50) -> Callable:
    def run(out: np.ndarray, lo: int, hi: int) -> None:
        for b in range(lo, hi, batch):
            e = min(b + batch, hi)
            decode_batch_into(
                IMAGES[b:e], HEIGHTS[b:e], WIDTHS[b:e], out[b:e], train=False, jpeg_backend=jpeg
            )

    return run


# ---------------------------------------------------------------------------- main


def main() -> None:
    global IMAGES, INDEXES, HEIGHTS, WIDTHS, PARAMS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="100 images, 2 rounds")
    ap.add_argument("--no-dali", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeat = min(args.images, 100), 2
    n, batch = args.images, args.batch
    torch.set_num_threads(1)  # as in a DataLoader worker

    IMAGES = load_images(n)
    INDEXES = [_core.jpeg_entropy_index(d) for d in IMAGES]
    sizes = [Image.open(io.BytesIO(d)).size for d in IMAGES]
    WIDTHS = [s[0] for s in sizes]
    HEIGHTS = [s[1] for s in sizes]
    PARAMS = draw_batch_params(
        HEIGHTS, WIDTHS, (SIZE, SIZE), train=True, rng=np.random.default_rng(SEED)
    )
    scaled = np.array([dct_scale(c.height, c.width, SIZE, SIZE) > 1 for c, _ in PARAMS])
    jpegs, resizes = available_jpeg_backends(), available_resize_backends()
    print(
        f"{n} JPEGs, mean {np.mean([len(d) for d in IMAGES]) / 1e3:.0f} KB, "
        f"{min(WIDTHS)}..{max(WIDTHS)} x {min(HEIGHTS)}..{max(HEIGHTS)}; "
        f"{scaled.sum()} of {n} crops allow a DCT-scaled decode; "
        f"JPEG backends {jpegs}, resize backends {resizes}"
    )

    variants: dict[str, Callable] = {
        "A  PIL decode+crop+resize (torchvision-style)": per_image(pil_baseline),
        "B1 PIL draft + crop + resize": per_image(pil_draft_crop),
        "B2 PIL draft + resize(box=)": per_image(pil_draft_box),
        "B3 PIL draft + resize(box=, reducing_gap=2)": per_image(pil_draft_box_gap),
        "B4 PIL decode + crop + reduce + resize": per_image(pil_reduce),
    }
    for j in jpegs:
        for r in resizes:
            variants[f"F  fastload {j} + {r} resize"] = fastload_batch(j, r, batch=batch)
    best_jpeg = jpegs[0]
    if best_jpeg == "libjpeg-region":
        variants[f"F  fastload {best_jpeg} + {resizes[0]}, indexed"] = fastload_batch(
            best_jpeg, resizes[0], batch=batch, indexed=True
        )
    variants[f"F  fastload {best_jpeg} + {resizes[0]}, CHW out"] = fastload_batch(
        best_jpeg, resizes[0], "CHW", batch=batch
    )
    if "simplejpeg" in jpegs:
        variants["S1 simplejpeg decode + PIL crop+resize"] = per_image(simplejpeg_plain)
    dali = {}
    if not args.no_dali:
        for fused, label in (
            (False, "decoders.image + random_resized_crop + flip"),
            (True, "decoders.image_random_crop + resize + flip"),
        ):
            run = dali_runner(fused, 1, batch)
            if run is not None:
                dali[fused] = label
                variants[f"D{int(fused) + 1} DALI CPU {label}, 1 thread"] = run
        if not dali:
            print("nvidia-dali not importable: DALI rows skipped")

    # ---- quality (same crops and flips as A)
    ref = outputs(variants["A  PIL decode+crop+resize (torchvision-style)"], n)
    quality = {}
    for name, run in variants.items():
        if name.startswith("D"):
            continue  # DALI draws its own crops
        got = outputs(run, n)
        quality[name] = {
            "mad": mad(got, ref),
            "mad_scaled": mad(got[scaled], ref[scaled]) if scaled.any() else None,
            "mad_unscaled": mad(got[~scaled], ref[~scaled]),
            "max": int(np.abs(got.astype(np.int16) - ref).max()),
        }

    # Scaled crops: is the DCT-scaled decode worse, or only different? Distance of A and of
    # fastload from a sharper, independent reference (full decode, Lanczos) on those crops.
    lanczos = {}
    if scaled.any():
        idx = np.flatnonzero(scaled)
        refl = np.stack([lanczos_reference(i) for i in idx])
        fast = outputs(fastload_batch(best_jpeg, resizes[0], batch=batch), n)
        lanczos = {"A": mad(ref[idx], refl), "fastload": mad(fast[idx], refl)}

    # ---- one core
    pinned = pin_one_cpu()
    one = time_variants(variants, n, args.repeat)
    eval_rates = time_variants(
        {
            "eval PIL resize 256 + center crop 224": per_image(eval_baseline),
            f"eval fastload {best_jpeg}": fastload_eval(best_jpeg, batch),
        },
        n,
        args.repeat,
    )
    if pinned is not None:
        os.sched_setaffinity(0, pinned)
    eval_mad = mad(
        outputs(fastload_eval(best_jpeg, batch), n), outputs(per_image(eval_baseline), n)
    )

    # ---- two cores: every contender once per round, rounds interleaved
    base_name = "A  PIL decode+crop+resize (torchvision-style)"
    fastest = max(
        (k for k in one if k.startswith("F  ") and "CHW" not in k and "indexed" not in k),
        key=lambda k: one[k]["cpu"],
    )
    fj, fr = fastest.split()[2], fastest.split()[4]
    contenders: dict[str, Callable] = {
        f"{base_name}, 2 processes": Processes(variants[base_name], n),
        f"{fastest}, 1 thread": fastload_batch(fj, fr, batch=batch),
        f"{fastest}, num_threads=2": fastload_batch(fj, fr, threads=2, batch=batch),
        f"{fastest}, 2 processes": Processes(variants[fastest], n),
    }
    indexed = [k for k in variants if k.endswith(", indexed")]
    if indexed:
        contenders[f"{indexed[0]}, 2 processes"] = Processes(variants[indexed[0]], n)
    if fj != "pillow":  # what a machine without simplejpeg gets
        pname = f"F  fastload pillow + {fr} resize"
        contenders[f"{pname}, num_threads=2"] = fastload_batch("pillow", fr, threads=2, batch=batch)
        contenders[f"{pname}, 2 processes"] = Processes(variants[pname], n)
    for fused, label in dali.items():
        contenders[f"D{int(fused) + 1} DALI CPU {label}, 2 threads"] = dali_runner(fused, 2, batch)
    cores = core_check(args.repeat)
    two = time_variants(contenders, n, args.repeat)
    for run in contenders.values():
        if isinstance(run, Processes):
            run.close()

    # ---- report
    base = one[base_name]["cpu"]
    print(
        f"\nOne core, {SIZE}x{SIZE} RandomResizedCrop + flip, uint8 out. img/s: images per "
        f"CPU-second (wall-clock rate beside it; the machine is shared). Quality: mean |diff| "
        f"from A for the same crop, in levels of 255; 'scaled': the {scaled.sum()} crops "
        f"decoded at 1/2..1/8"
    )
    print(
        f"{'variant':66s} {'img/s':>6s} {'wall':>6s} {'x A':>5s} {'MAD':>5s} {'scaled':>6s} "
        f"{'max':>4s}"
    )
    for name, rate in one.items():
        q = quality.get(name)
        if q:
            sc = q["mad_scaled"] if q["mad_scaled"] is not None else float("nan")
            qs = f"{q['mad']:5.2f} {sc:6.2f} {q['max']:4d}"
        else:
            qs = f"{'-':>5s} {'-':>6s} {'-':>4s}"
        print(f"{name:66s} {rate['cpu']:6.0f} {rate['wall']:6.0f} {rate['cpu'] / base:5.2f} {qs}")
    if lanczos:
        print(
            f"scaled crops, MAD from a full-resolution Lanczos resize: A {lanczos['A']:.2f}, "
            f"fastload {lanczos['fastload']:.2f}"
        )
    ebase = next(iter(eval_rates.values()))["cpu"]
    for name, rate in eval_rates.items():
        print(f"{name:66s} {rate['cpu']:6.0f} {rate['wall']:6.0f} {rate['cpu'] / ebase:5.2f}")
    print(f"eval quality: fastload vs PIL resize + center crop, MAD {eval_mad:.2f}")
    target = 0.95 * 2 * base
    print(
        f"\nTwo cores, wall-clock img/s (zlib on this machine just now: 2 threads "
        f"x{cores['threads']:.2f}, 2 processes x{cores['processes']:.2f} of one core). "
        f"Loader target: >= 0.95 x 2 x A's one-core rate = {target:.0f}, and above DALI"
    )
    print(f"{'':66s} {'img/s':>6s} {'/target':>7s} {'img/CPU-s':>9s}")
    for name, rate in two.items():
        print(f"{name:66s} {rate['wall']:6.0f} {rate['wall'] / target:7.2f} {rate['cpu']:9.0f}")

    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(
            {
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "pillow": Image.__version__,
                    "torch": torch.__version__,
                    "numpy": np.__version__,
                },
                "images": n,
                "mean_bytes": float(np.mean([len(d) for d in IMAGES])),
                "scaled_crops": int(scaled.sum()),
                "size": SIZE,
                "repeat": args.repeat,
                "batch": batch,
                "one_core_images_per_s": one,
                "quality_vs_A": quality,
                "eval_images_per_s": eval_rates,
                "eval_mad_vs_pil": eval_mad,
                "two_cores_images_per_s": two,
                "zlib_two_core_speedup": cores,
                "scaled_crops_mad_vs_lanczos": lanczos,
                "loader_target_images_per_s": target,
                "fastest": fastest,
            },
            f,
            indent=2,
        )
    print(f"\nwrote {os.path.relpath(RESULTS)}")


if __name__ == "__main__":
    main()
