"""The loader rows of gpu.py: whole loaders delivering normalized bf16 ImageNet-style batches
(RandomResizedCrop 224 + flip) to the GPU, each measured the same way in one run:

  - fastload, decoding on the CPU in its workers, finishing on the GPU (``device="cuda"``),
    vs torch's DataLoader with torchvision.transforms.v2 (decode, RandomResizedCrop, flip,
    ToDtype + Normalize in float32) and ``pin_memory=True``, the batch then copied and cast to
    bf16 on the GPU (target >= 1.5x);
  - fastload decoding on the GPU (``backend="nvimgcodec"``, and ``"dali"`` when DALI is
    installed) vs fastload decoding on the CPU (target >= 2x);
  - fastload's DALI backend vs DALI's own pipeline over the same JPEGs as files
    (readers.file, the mixed decoder's random crop, resize, crop_mirror_normalize to float16
    CHW with a random mirror; target >= 0.9x);
  - each one's data stall: the share of time the loop waits for its next batch under a
    training step that sleeps for 1.25x its own batch time (80% load);
  - the GPU memory each fastload loader holds (torch's allocator peak, and the device's
    memory in use, which counts DALI's and nvImageCodec's own buffers).

With ``--dry-run`` (no GPU) the same loaders run on the CPU: no copy to a device, and where
torchvision is not installed the torch baseline transforms with PIL and numpy instead (its
name says so). Its figures check the script, not a GPU.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

import fastload
from fastload.decode import IMAGENET_MEAN, IMAGENET_STD

SIZE = 224
ROWS = (
    "bf16 images/s to the GPU, CPU decode",
    "GPU decode, nvimgcodec",
    "GPU decode, dali",
    "DALI inside fastload vs DALI's own pipeline",
)


@dataclass
class Rates:
    """Batches per second, the data stall at 80% load, and GPU memory (bytes; None on the
    CPU) held while it ran: torch's allocator peak and the device's memory in use."""

    rate: float
    stall: float
    torch_peak: int | None = None
    device_used: int | None = None


def measure(
    make: Callable[[], Iterator], to_gpu: Callable, steps: int, device: torch.device
) -> Rates:
    """``make()`` gives an endless iterator of batches; each batch goes through ``to_gpu``
    (what a training loop does to it first). Rate over ``steps`` batches after one; then the
    stall over ``steps`` batches under a step that sleeps 1.25x the mean batch time (after
    half as many at that pace, not counted)."""
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info(device)[0]
        allocated = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    batches = make()
    to_gpu(next(batches))  # the first: workers start, pipelines build
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        to_gpu(next(batches))
    _sync(device)
    rate = steps / (time.perf_counter() - t0)
    step, waited = 1.25 / rate, 0.0
    for _ in range(steps // 2):  # at that pace first: the queue drained above refills
        to_gpu(next(batches))
        time.sleep(step)
    t0 = time.perf_counter()
    for _ in range(steps):
        w0 = time.perf_counter()
        to_gpu(next(batches))
        waited += time.perf_counter() - w0
        time.sleep(step)
    stall = waited / (time.perf_counter() - t0)
    out = Rates(rate, stall)
    if gpu:
        _sync(device)
        out.torch_peak = torch.cuda.max_memory_allocated(device) - allocated
        out.device_used = free_before - torch.cuda.mem_get_info(device)[0]
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(loader) -> Iterator:
    """Batches of ``loader``'s epochs, one after another (its workers persistent)."""
    try:
        while True:
            yield from loader
    finally:
        if hasattr(loader, "close"):
            loader.close()
        elif getattr(loader, "_iterator", None) is not None:
            loader._iterator._shutdown_workers()


def fastload_loader(path: str, backend: str, batch: int, workers: int, device):
    spec = fastload.ImageDecode(
        SIZE, train=True, normalize="imagenet", dtype=torch.bfloat16, backend=backend
    )
    return fastload.DataLoader(
        fastload.Dataset(path),
        batch_size=batch,
        shuffle=True,
        seed=0,
        num_workers=workers,
        persistent_workers=True,
        drop_last=True,
        decode={"image": spec},
        device=device,
    )


def torch_loader(images: list[bytes], batch: int, workers: int, pin: bool):
    """torch's DataLoader the usual way: torchvision decode + transforms.v2 in the workers,
    float32 normalized, pin_memory=True; without torchvision, PIL and numpy. Returns the
    loader and the baseline's name."""
    try:
        import torchvision.transforms.v2 as T
        from torchvision.io import decode_jpeg

        transform = T.Compose(
            [
                T.RandomResizedCrop(SIZE, antialias=True),
                T.RandomHorizontalFlip(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

        def load(data: bytes) -> torch.Tensor:
            return transform(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)))

        name = "torch DataLoader + torchvision transforms.v2"
    except ImportError:  # torchvision does not import beside some CPU torch builds
        load = pil_transform
        name = "torch DataLoader + PIL/numpy transforms (no torchvision here)"

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return {"image": load(images[i]), "label": i % 1000}

    loader = torch.utils.data.DataLoader(
        Images(),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        drop_last=True,
        persistent_workers=True,
    )
    return loader, name + (", pin_memory=True" if pin else "")


def pil_transform(data: bytes) -> torch.Tensor:
    """RandomResizedCrop 224 (torchvision's draw) + flip + ToTensor + Normalize with PIL and
    numpy, float32 CHW."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    left, top, cw, ch = 0, 0, w, h
    for _ in range(10):
        area = w * h * random.uniform(0.08, 1.0)
        aspect = np.exp(random.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            left, top = random.randint(0, w - cw), random.randint(0, h - ch)
            break
    else:
        left, top, cw, ch = 0, 0, w, h
    image = image.resize(
        (SIZE, SIZE), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch)
    )
    if random.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = np.asarray(image, np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def dali_pipeline(folder: str, batch: int, device: torch.device) -> Iterator:
    """DALI's own pipeline over the JPEG files in ``folder``: readers.file, decode with a
    random crop (mixed on a GPU), resize to 224, crop_mirror_normalize to float16 CHW with a
    random mirror; each batch copied into a torch tensor as DALI's PyTorch iterator does."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import feed_ndarray

    gpu = device.type == "cuda"

    @pipeline_def(
        batch_size=batch,
        num_threads=min(8, os.cpu_count() or 1),
        device_id=(device.index or 0) if gpu else None,
    )
    def pipe():
        jpegs, _ = fn.readers.file(file_root=folder, random_shuffle=True, name="reader")
        img = fn.decoders.image_random_crop(
            jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB
        )
        img = fn.resize(img, resize_x=SIZE, resize_y=SIZE, antialias=True)
        return fn.crop_mirror_normalize(
            img,
            dtype=types.FLOAT16,
            output_layout="CHW",
            mean=[m * 255 for m in IMAGENET_MEAN],
            std=[s * 255 for s in IMAGENET_STD],
            mirror=fn.random.coin_flip(),
        )

    p = pipe()
    p.build()
    while True:
        (out,) = p.run()
        tensor = out.as_tensor()
        x = torch.empty(tuple(tensor.shape()), dtype=torch.float16, device=device)
        feed_ndarray(tensor, x, cuda_stream=torch.cuda.current_stream() if gpu else None)
        yield {"image": x}


def write_dataset(root: str, images: list[bytes]) -> tuple[str, str]:
    """The images as a fastload dataset and as a folder of JPEG files (one class)."""
    path, folder = os.path.join(root, "images"), os.path.join(root, "files")
    os.makedirs(os.path.join(folder, "0"))
    with fastload.Writer(path, {"image": "image", "label": "int64"}) as w:
        for i, data in enumerate(images):
            w.write({"image": data, "label": i % 1000})
            with open(os.path.join(folder, "0", f"{i:06d}.jpg"), "wb") as f:
                f.write(data)
    return path, folder


def run_loaders(report, device, images: list[bytes], batch: int, steps: int, workers: int):
    """Every loader row; ``report`` as gpu.py's."""
    gpu = device.type == "cuda"
    target = device if gpu else None

    def to_gpu(b):
        x = b["image"]
        if gpu and not x.is_cuda:
            x = x.to(device, non_blocking=True)
        return x.to(torch.bfloat16)

    with tempfile.TemporaryDirectory() as root:
        path, folder = write_dataset(root, images)
        ours = measure(
            lambda: forever(fastload_loader(path, "cpu", batch, workers, target)),
            to_gpu,
            steps,
            device,
        )
        theirs_loader, theirs_name = torch_loader(images, batch, workers, pin=gpu)
        theirs = measure(lambda: forever(theirs_loader), to_gpu, steps, device)
        where = ROWS[0] if gpu else ROWS[0].replace("to the GPU", "on the CPU (dry run)")
        report.add(
            "loader",
            f"{where}, {workers} worker{'s' if workers != 1 else ''}",
            "images/s",
            ours.rate * batch,
            theirs.rate * batch,
            theirs_name,
            ">= 1.5x",
        )
        report.add(
            "loader",
            "data stall at 80% load, CPU decode (lower is better)",
            "% of time",
            ours.stall * 100,
            theirs.stall * 100,
            "the same for " + theirs_name.split(",")[0],
        )
        memory_rows(report, "CPU decode", ours)
        decoded = {}
        for backend in ("nvimgcodec", "dali"):
            name = f"GPU decode, {backend}" if gpu else f"{backend}'s CPU backend"
            try:
                rates = measure(
                    lambda b=backend: forever(fastload_loader(path, b, batch, workers, target)),
                    to_gpu,
                    steps,
                    device,
                )
            except ImportError as e:
                report.skip("loader", name, str(e).split(":")[0] + ": not installed")
                continue
            decoded[backend] = rates
            report.add(
                "loader",
                f"{name} vs fastload's CPU decode",
                "images/s",
                rates.rate * batch,
                ours.rate * batch,
                "fastload, CPU decode in its workers",
                ">= 2x" if gpu else "",
            )
            report.add(
                "loader",
                f"data stall at 80% load, {name}",
                "% of time",
                rates.stall * 100,
                ours.stall * 100,
                "fastload, CPU decode",
            )
            memory_rows(report, name, rates)
        if "dali" in decoded:
            own = measure(lambda: dali_pipeline(folder, batch, device), to_gpu, steps, device)
            report.add(
                "loader",
                ROWS[3],
                "images/s",
                decoded["dali"].rate * batch,
                own.rate * batch,
                "DALI readers.file + crop_mirror_normalize (fp16)",
                ">= 0.9x",
            )
            report.add(
                "loader",
                "data stall at 80% load, DALI's own pipeline",
                "% of time",
                decoded["dali"].stall * 100,
                own.stall * 100,
                "DALI's own pipeline",
            )


def memory_rows(report, name: str, rates: Rates) -> None:
    if rates.torch_peak is None:
        report.skip("loader", f"GPU memory held, {name}", "needs a CUDA GPU")
        return
    report.add(
        "loader",
        f"GPU memory held, {name}: torch allocator peak",
        "MiB",
        rates.torch_peak / 2**20,
        None,
        "-",
    )
    report.add(
        "loader",
        f"GPU memory held, {name}: device memory in use",
        "MiB",
        rates.device_used / 2**20,
        None,
        "-",
    )
