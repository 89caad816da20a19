"""How much does the GPU half of fastload buy, measured side by side in one run on one machine?

Every figure is a ratio of two things timed here, now, on the same data:

  h2d        host-to-device GB/s from memory registered with cudaHostRegister (how the loader
             pins its shared-memory slabs) vs torch's own pinned tensor (target >= 0.9x);
             pageable memory for context
  finish     fastload.decode.finish_images (one kernel: uint8 NHWC -> normalized NCHW
             float32/bf16) vs the torch ops users write, permute().float().sub_().div_();
             finish_tokens (uint16 rows -> int64 inputs and shifted targets) vs .to(int64)
             and two slices; and the whole trip from a pinned uint8 batch: copy the uint8
             and finish on the GPU vs normalize on the CPU and copy the floats
  decode     RandomResizedCrop 224 + flip of ImageNet-sized JPEGs: nvImageCodec on the GPU
             (only each crop's region decoded) vs fastload's CPU decoder on every core of this
             machine (target >= 2x); DALI's mixed decoder inside fastload (DaliDecoder) and
             DALI's own readers.file pipeline when DALI is installed (target >= 0.9x)
  loader     fastload.DataLoader(decode={"image": ImageDecode(224, train=True,
             normalize="imagenet", dtype=torch.bfloat16)}, device="cuda") vs torch's
             DataLoader with torchvision.transforms.v2 and pin_memory=True (target >= 1.5x);
             the same loader decoding on the GPU (backend="nvimgcodec", and "dali") vs
             decoding on the CPU (target >= 2x); backend="dali" vs DALI's own readers.file
             pipeline (target >= 0.9x); each one's data stall under a training step that
             sleeps for 1.25x its own batch time (80% load); the GPU memory each holds
             (see _gpu_loaders.py)

    python benchmarks/gpu.py [--out FILE] [--quick] [--dry-run]

``--dry-run`` runs every row that needs no GPU on the CPU instead, with small sizes (the
CPU finishing and decode paths, DALI's and nvImageCodec's CPU backends), so the script itself
is checked where there is no GPU; its figures are not the GPU's. Rows that cannot run say why.
Results: a table on stdout and a JSON file (default benchmarks/results/gpu.json; with
--dry-run, gpu-dry-run.json in the system's temporary directory).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import mmap
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from typing import Callable

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing
sys.path.insert(0, HERE)

import _gpu_loaders  # noqa: E402
import torch  # noqa: E402

import fastload  # noqa: E402
from fastload.decode import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_batch_into,
    draw_batch_params,
    finish_images,
    finish_tokens,
)

SEED = 2024
SIZE = 224


class Report:
    """The rows measured (or skipped, with why), printed as they come and saved as JSON."""

    def __init__(self, device: torch.device, dry_run: bool) -> None:
        self.rows: list[dict] = []
        self.device = device
        self.dry_run = dry_run

    def add(
        self,
        group: str,
        name: str,
        unit: str,
        fastload_value: float | None,
        baseline_value: float | None,
        baseline: str,
        target: str = "",
        **extra,
    ) -> None:
        ratio = (
            fastload_value / baseline_value
            if fastload_value is not None and baseline_value
            else None
        )
        row = {
            "group": group,
            "name": name,
            "unit": unit,
            "fastload": fastload_value,
            "baseline": baseline,
            "baseline_value": baseline_value,
            "ratio": ratio,
            "target": target,
            "status": "ok",
            **extra,
        }
        self.rows.append(row)
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        print(
            f"  {group:7} {name:46} {_fmt(fastload_value):>10} vs {_fmt(baseline_value):>10} "
            f"{unit:10} {shown:>7}  ({baseline}){'  target ' + target if target else ''}",
            flush=True,
        )

    def skip(self, group: str, name: str, why: str) -> None:
        self.rows.append({"group": group, "name": name, "status": f"skipped: {why}"})
        print(f"  {group:7} {name:46} skipped: {why}", flush=True)

    def fail(self, group: str, name: str, error: BaseException) -> None:
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        self.rows.append({"group": group, "name": name, "status": f"error: {text}"})
        print(f"  {group:7} {name:46} ERROR: {text}", flush=True)
        traceback.print_exc()

    def save(self, path: str, seconds: float) -> None:
        info = {
            "script": "benchmarks/gpu.py",
            "dry_run": self.dry_run,
            "device": describe_device(self.device),
            "host": {
                "python": platform.python_version(),
                "cpus": cpu_count(),
                "machine": platform.machine(),
            },
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "fastload_core_has_cuda": fastload._core.core_has_cuda,
            "seconds": round(seconds, 1),
            "rows": self.rows,
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(info, f, indent=1)
        print(f"results: {path}")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_device(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"type": "cpu", "name": platform.processor() or platform.machine()}
    p = torch.cuda.get_device_properties(device)
    return {
        "type": "cuda",
        "name": p.name,
        "compute_capability": f"{p.major}.{p.minor}",
        "memory_gib": round(p.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
    }


# ------------------------------------------------------------------------------ timing


def seconds_per_call(fn: Callable, device: torch.device, repeat: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()``: CUDA events on the current stream for GPU work (the call
    queues it), wall time with a synchronize for anything with CPU work in it."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gpu_seconds(fn: Callable, repeat: int, warmup: int = 2) -> float:
    """Median seconds of the GPU work ``fn()`` queues on the current stream (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ data


def photo_jpegs(n: int, seed: int = SEED) -> tuple[list[bytes], list[int], list[int]]:
    """ImageNet-sized JPEGs (500x375 .. 640x480, quality 90) with photo-like content: smooth
    colour fields, shapes and noise, so their sizes and decode costs resemble photos'."""
    rng = np.random.default_rng(seed)
    sizes = [(375, 500), (480, 640), (500, 375), (333, 500), (427, 640)]
    images, hs, ws = [], [], []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        field = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
        a = np.asarray(field.resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
        for _ in range(5):
            y, x = rng.integers(0, h), rng.integers(0, w)
            a[y : y + h // 5, x : x + w // 6] = rng.integers(0, 256, 3)
        a += rng.integers(-8, 9, a.shape, dtype=np.int16)
        f = io.BytesIO()
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(f, "JPEG", quality=90)
        images.append(f.getvalue())
        hs.append(h)
        ws.append(w)
    return images, hs, ws


# ------------------------------------------------------------------------------ h2d


def bench_h2d(report: Report, device: torch.device, mib: int, repeat: int) -> None:
    if device.type != "cuda":
        for name in ("registered vs torch pinned", "registered vs pageable"):
            report.skip("h2d", name, "needs a CUDA GPU")
        return
    n = mib << 20
    dst = torch.empty(n, dtype=torch.uint8, device=device)
    # Registered: an anonymous shared mapping, as the loader's slabs are, page-locked in place.
    area = mmap.mmap(-1, n)
    registered = torch.frombuffer(area, dtype=torch.uint8)
    registered.fill_(1)
    cudart = torch.cuda.cudart()
    err = cudart.cudaHostRegister(registered.data_ptr(), n, 0)
    if int(err) != 0:
        report.skip("h2d", "registered vs torch pinned", f"cudaHostRegister failed: {err}")
        return
    try:
        pinned = torch.ones(n, dtype=torch.uint8).pin_memory()
        pageable = torch.ones(n, dtype=torch.uint8)

        def copy_from(src):
            return lambda: dst.copy_(src, non_blocking=True)

        rate = {
            name: n / gpu_seconds(copy_from(src), repeat) / 1e9
            for name, src in (
                ("registered", registered),
                ("pinned", pinned),
                ("pageable", pageable),
            )
        }
        report.add(
            "h2d",
            f"registered memory, {mib} MiB copies",
            "GB/s",
            rate["registered"],
            rate["pinned"],
            "torch pinned tensor",
            ">= 0.9x",
        )
        report.add(
            "h2d",
            f"registered memory vs pageable, {mib} MiB",
            "GB/s",
            rate["registered"],
            rate["pageable"],
            "pageable tensor",
        )
    finally:
        torch.cuda.synchronize()
        cudart.cudaHostUnregister(registered.data_ptr())
        del registered
        area.close()


# ------------------------------------------------------------------------------ finishing


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor([m * 255 for m in IMAGENET_MEAN], device=device).view(1, 3, 1, 1)
    std = torch.tensor([s * 255 for s in IMAGENET_STD], device=device).view(1, 3, 1, 1)
    return mean, std


def torch_normalize(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What users write: permute().float().sub_().div_() (then .to(dtype))."""
    mean, std = _mean_std(x.device)
    y = x.permute(0, 3, 1, 2).float().sub_(mean).div_(std)
    return y if dtype == torch.float32 else y.to(dtype)


def bench_finish(report: Report, device: torch.device, batch: int, repeat: int) -> None:
    g = torch.Generator().manual_seed(SEED)
    host = torch.randint(0, 256, (batch, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)
    x = host.to(device)
    where = "GPU" if device.type == "cuda" else "CPU"

    def timed(fn):
        if device.type == "cuda":
            return gpu_seconds(fn, repeat)
        return seconds_per_call(fn, device, repeat)

    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        ours = timed(lambda: finish_images(x, dtype=dtype))  # noqa: B023
        theirs = timed(lambda: torch_normalize(x, dtype))  # noqa: B023
        if not torch.allclose(
            finish_images(x, dtype=dtype).float(), torch_normalize(x, dtype).float(), atol=0.02
        ):
            raise AssertionError(f"finish_images and the torch ops disagree ({name})")
        report.add(
            "finish",
            f"images {batch}x224x224 -> {name} NCHW on the {where}",
            "images/s",
            batch / ours,
            batch / theirs,
            "permute().float().sub_().div_()",
        )
    rows = torch.randint(0, 50_000, (batch, 2049), dtype=torch.int32, generator=g).to(torch.uint16)
    rows = rows.to(device)

    def torch_tokens():
        t = rows.to(torch.int64)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    ours = timed(lambda: finish_tokens(rows))
    try:
        theirs = timed(torch_tokens)
    except (RuntimeError, TypeError) as e:  # uint16 ops missing on this torch and device
        report.skip("finish", f"tokens {batch}x2049 uint16 -> int64 + shift", f"torch: {e}")
        return
    report.add(
        "finish",
        f"tokens {batch}x2049 uint16 -> int64 + shift ({where})",
        "rows/s",
        batch / ours,
        batch / theirs,
        ".to(int64)[:, :-1], [:, 1:]",
    )
    if device.type == "cuda":
        bench_trip(report, device, host, repeat)


def bench_trip(report: Report, device: torch.device, host: torch.Tensor, repeat: int) -> None:
    """From a pinned uint8 batch to normalized bf16 on the GPU: uint8 across PCIe and one
    kernel there, vs torch's normalize on the CPU and the bf16 across PCIe."""
    batch = host.shape[0]
    pinned = host.pin_memory()
    bf16_pinned = torch.empty((batch, 3, SIZE, SIZE), dtype=torch.bfloat16).pin_memory()
    x = torch.empty_like(pinned, device=device)

    def gpu_finish():
        x.copy_(pinned, non_blocking=True)
        return finish_images(x, dtype=torch.bfloat16)

    def cpu_finish():
        bf16_pinned.copy_(torch_normalize(pinned, torch.bfloat16))
        return bf16_pinned.to(device, non_blocking=True)

    ours = seconds_per_call(gpu_finish, device, repeat)
    theirs = seconds_per_call(cpu_finish, device, max(3, repeat // 3))
    report.add(
        "finish",
        f"pinned uint8 -> bf16 on the GPU, batch {batch}",
        "images/s",
        batch / ours,
        batch / theirs,
        "torch normalize on the CPU, then copy",
    )


# ------------------------------------------------------------------------------ decode


def bench_decode(report: Report, device: torch.device, n: int, repeat: int) -> None:
    images, hs, ws = photo_jpegs(n)
    cores = cpu_count()
    params = draw_batch_params(hs, ws, (SIZE, SIZE), train=True, rng=np.random.default_rng(SEED))
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    cpu_seconds = seconds_per_call(
        lambda: decode_batch_into(
            images, hs, ws, out, train=True, params=params, num_threads=cores
        ),
        torch.device("cpu"),
        repeat,
        warmup=1,
    )
    cpu_rate = n / cpu_seconds
    baseline = f"fastload CPU decoder, {cores} threads"
    where = "GPU" if device.type == "cuda" else "CPU backend"
    try:
        from fastload.decode.nvimgcodec import NvImageCodecDecoder

        dec = NvImageCodecDecoder(device=device)
        run = lambda: dec.decode_batch(images, hs, ws, size=SIZE, train=True, params=params)  # noqa: E731
        rate = n / seconds_per_call(run, device, repeat, warmup=1)
        target = ">= 2x" if device.type == "cuda" else ""
        report.add(
            "decode",
            f"nvImageCodec ({where}), RRC 224",
            "images/s",
            rate,
            cpu_rate,
            baseline,
            target,
        )
    except ImportError as e:
        report.skip("decode", "nvImageCodec, RRC 224", str(e).split(":")[0] + ": not installed")
    except Exception as e:
        report.fail("decode", "nvImageCodec, RRC 224", e)
    bench_dali(report, device, images, hs, ws, cpu_rate, baseline, repeat)


def bench_dali(report, device, images, hs, ws, cpu_rate, baseline, repeat) -> None:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        for name in ("DALI inside fastload", "DALI readers.file pipeline"):
            report.skip("decode", name, "nvidia-dali is not installed")
        return
    from fastload.decode.dali import DaliDecoder
    from fastload.decode.encoded import encoded_batch
    from fastload.format.imageinfo import EncodedImage

    n = len(images)
    where = "mixed, GPU" if device.type == "cuda" else "CPU backend"
    spec = fastload.ImageDecode(SIZE, train=True, backend="dali")
    encoded = [EncodedImage(d, "jpeg", h, w) for d, h, w in zip(images, hs, ws)]
    batch = encoded_batch(encoded, spec, (SEED, 0), range(n), np.arange(n))
    decoder = DaliDecoder("image", spec, n, device if device.type == "cuda" else None)

    def inside():
        decoder.submit(batch)
        return decoder.collect()

    try:
        inside_rate = n / seconds_per_call(inside, device, repeat, warmup=1)
        report.add(
            "decode",
            f"DALI inside fastload ({where}), RRC 224",
            "images/s",
            inside_rate,
            cpu_rate,
            baseline,
        )
    except Exception as e:
        report.fail("decode", "DALI inside fastload", e)
        return
    try:
        own = dali_readers_file_rate(images, device, repeat)
        report.add(
            "decode",
            f"DALI inside fastload vs DALI's readers.file ({where})",
            "images/s",
            inside_rate,
            own,
            "DALI's own file pipeline",
            ">= 0.9x",
        )
    except Exception as e:
        report.fail("decode", "DALI readers.file pipeline", e)


def dali_readers_file_rate(images: list[bytes], device: torch.device, repeat: int) -> float:
    """DALI's own pipeline over the same JPEGs as files: readers.file, decoders.image
    RandomResizedCrop (mixed on a GPU), resize to 224, flip; images/s."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    n = len(images)
    gpu = device.type == "cuda"
    with tempfile.TemporaryDirectory() as root:
        folder = os.path.join(root, "0")
        os.makedirs(folder)
        for i, data in enumerate(images):
            with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
                f.write(data)

        @pipeline_def(
            batch_size=n,
            num_threads=min(8, cpu_count()),
            device_id=(device.index or 0) if gpu else None,
            prefetch_queue_depth=1,
        )
        def pipe():
            jpegs, _ = fn.readers.file(file_root=root, random_shuffle=False, name="reader")
            img = fn.decoders.image_random_crop(
                jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB
            )
            img = fn.resize(img, resize_x=SIZE, resize_y=SIZE, antialias=True)
            return fn.flip(img, horizontal=fn.random.coin_flip())

        p = pipe()
        p.build()

        # (a device-wide synchronize after each run: DALI's GPU work is on its own stream)
        return n / seconds_per_call(p.run, device, repeat, warmup=1)


# ------------------------------------------------------------------------------ loader


def loader_integration() -> str | None:
    """None where the loader has GPU finishing (ImageDecode(normalize=, dtype=)), else why
    the loader rows cannot run."""
    fields = {f.name for f in dataclasses.fields(fastload.ImageDecode)}
    missing = sorted({"normalize", "dtype"} - fields)
    if missing:
        return f"needs the loader integration (ImageDecode has no {', '.join(missing)} yet)"
    return None


def bench_loader(report: Report, device: torch.device, n: int, batch: int, steps: int) -> None:
    """Whole loaders to the GPU (see _gpu_loaders.py): ``n`` records, made of at most 1024
    distinct JPEGs (their decode costs what photos' do; making more would take minutes)."""
    why = loader_integration()
    if why is not None:
        for name in _gpu_loaders.ROWS:
            report.skip("loader", name, why)
        return
    distinct, _, _ = photo_jpegs(min(n, 1024), seed=SEED + 1)
    images = [distinct[i % len(distinct)] for i in range(n)]
    workers = max(1, cpu_count() - 1)
    _gpu_loaders.run_loaders(report, device, images, batch, steps, workers)


# ------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="JSON file to write")
    ap.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="run the rows that need no GPU on the CPU, small (checks the script)",
    )
    args = ap.parse_args()
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        ap.error("no CUDA GPU here: use --dry-run to check the script on the CPU")
    device = torch.device("cpu") if dry else torch.device("cuda", torch.cuda.current_device())
    small = dry or args.quick
    out = args.out or (
        os.path.join(tempfile.gettempdir(), "gpu-dry-run.json")
        if dry
        else os.path.join(HERE, "results", "gpu.json")
    )
    print(f"device: {describe_device(device)}  torch {torch.__version__}", flush=True)
    report = Report(device, dry)
    t0 = time.perf_counter()
    sections = [
        ("h2d", lambda: bench_h2d(report, device, 64 if small else 256, 5 if small else 20)),
        ("finish", lambda: bench_finish(report, device, 8 if dry else 256, 3 if small else 20)),
        ("decode", lambda: bench_decode(report, device, 16 if dry else 256, 2 if small else 5)),
        (
            "loader",
            lambda: bench_loader(
                report, device, 256 if dry else 4096, 32 if dry else 256, 4 if dry else 12
            ),
        ),
    ]
    failed = 0
    for name, run in sections:
        try:
            run()
        except Exception as e:  # one section's failure is reported, the others still run
            report.fail(name, "(section)", e)
            failed += 1
    report.save(out, time.perf_counter() - t0)
    return 1 if failed or any(r["status"].startswith("error") for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
