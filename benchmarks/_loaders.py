"""The contenders of loader.py, each run as its own process, and the writers of their data.

    python _loaders.py run KIND DATA [--batches N] [--stall-batches N] [--seconds S] ...
    python _loaders.py run pil-limit|pil-draft-limit IMAGE_FOLDER [--epochs N]
    python _loaders.py imports KIND -                   (imports KIND's libraries, sleeps 1 s)
    python _loaders.py write-wds SRC DST --shards N
    python _loaders.py write-mds-tokens SRC DST [--shard-bytes N]  (from .venv-streaming)
    python _loaders.py write-litdata-tokens SRC DST

``run`` prints one JSON line: samples/s, time to first batch, data stall %, and what was
checked. Only the standard library and numpy are imported at the top: the Streaming
contenders run from benchmarks/.venv-streaming, which has no fastload, webdataset or litdata.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import random
import sys
import time
import warnings

import _procmem  # standard library only, as this file
import numpy as np

# to_chw wraps PIL's read-only array, as torchvision's PILToTensor does after its own copy.
warnings.filterwarnings("ignore", "The given NumPy array is not writable")

SEQ = 2049  # tokens per sample
SIZE = 224  # image side after RandomResizedCrop
WORKERS = 2
WARM = 2  # batches left out of the steady rate: with 2 workers the first two arrive together
SEED = 0


# ---------------------------------------------------------------- the shared image transform


def rrc_params(w: int, h: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple:
    """torchvision's RandomResizedCrop.get_params (10 tries, then a centre crop), drawn from
    Python's ``random`` (torch's DataLoader seeds it per worker). Returns (left, top, w, h)."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return random.randint(0, w - cw), random.randint(0, h - ch), cw, ch
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif aspect > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def augment(img) -> np.ndarray:
    """RandomResizedCrop(224) + RandomHorizontalFlip on a PIL image, as torchvision does them
    (crop, then resize BILINEAR; no JPEG draft mode): uint8 HWC pixels."""
    from PIL import Image

    img = img.convert("RGB")  # torchvision's pil_loader; this also decodes the JPEG
    left, top, cw, ch = rrc_params(*img.size)
    img = img.crop((left, top, left + cw, top + ch)).resize((SIZE, SIZE), Image.BILINEAR)
    if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img)


def augment_draft(img) -> np.ndarray:
    """augment() with a scaled JPEG decode: the same crop, decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that leaves the crop at least 224 pixels on each side. Fewer pixels to
    decode than torchvision decodes; the result differs slightly from a full decode."""
    from PIL import Image

    w, h = img.size
    left, top, cw, ch = rrc_params(w, h)
    scale = max([s for s in (1, 2, 4, 8) if cw // s >= SIZE and ch // s >= SIZE], default=1)
    if scale > 1:
        img.draft("RGB", (-(-w // scale), -(-h // scale)))
    img = img.convert("RGB")
    fx, fy = img.size[0] / w, img.size[1] / h
    box = (left * fx, top * fy, (left + cw) * fx, (top + ch) * fy)
    img = img.resize((SIZE, SIZE), Image.BILINEAR, box=box)
    if random.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img)


def to_chw(pixels: np.ndarray):
    """torchvision's PILToTensor: a contiguous uint8 CHW tensor."""
    import torch

    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def open_jpeg(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data))


def list_images(root: str) -> list[tuple[str, int]]:
    """(path, label) in ImageFolder's order: sorted classes, sorted files."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    return [
        (os.path.join(root, c, f), label)
        for label, c in enumerate(classes)
        for f in sorted(os.listdir(os.path.join(root, c)))
    ]


# ---------------------------------------------------------------- tokens contenders


class TokenFile:
    """torch's map-style Dataset over a memmap of the raw token file (opened lazily, so each
    worker maps it itself)."""

    def __init__(self, path: str):
        self.path, self.n, self.mm = path, os.path.getsize(path) // 2 // SEQ, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        if self.mm is None:
            self.mm = np.memmap(self.path, np.uint16, "r", shape=(self.n, SEQ))
        return torch.from_numpy(np.array(self.mm[i]))


def torch_tokens(path: str, batch: int):
    import torch

    return torch.utils.data.DataLoader(
        TokenFile(path), batch_size=batch, shuffle=True, num_workers=WORKERS
    )


class Gather:
    """The practical limit: one process, a shuffled order, each batch copied from the memmap
    into one preallocated array with a single fancy-index take. Iterating is one epoch."""

    def __init__(self, path: str, batch: int):
        import torch

        n = os.path.getsize(path) // 2 // SEQ
        self.mm = np.memmap(path, np.uint16, "r", shape=(n, SEQ))
        self.out = np.empty((batch, SEQ), np.uint16)
        self.tensor = torch.from_numpy(self.out)  # shares self.out: no copy per batch
        self.rng, self.batch = np.random.default_rng(SEED), batch

    def __iter__(self):
        order = self.rng.permutation(len(self.mm))
        for i in range(0, len(order) - self.batch + 1, self.batch):  # full batches only
            np.take(self.mm, order[i : i + self.batch], axis=0, out=self.out)
            yield self.tensor


def streaming_loader(path: str, batch: int, images: bool):
    """MosaicML Streaming over local MDS shards, torch DataLoader on top. ``path`` may also be
    a remote URL (remote.py): then shards are downloaded to $STREAMING_LOCAL (its client reads
    S3_ENDPOINT_URL and the AWS_* variables)."""
    import torch
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()  # a killed earlier run can leave its shared memory behind

    class Images(StreamingDataset):
        def __getitem__(self, i):
            sample = super().__getitem__(i)
            return to_chw(augment(open_jpeg(sample["image"]))), sample["label"]

    cls = Images if images else StreamingDataset
    where = (
        dict(remote=path, local=os.environ["STREAMING_LOCAL"])
        if "://" in path
        else dict(local=path)
    )
    ds = cls(**where, batch_size=batch, shuffle=True)
    return torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=WORKERS)


def litdata_tokens(path: str, batch: int):
    """LitData's way for LLM pre-training: TokensLoader blocks of SEQ tokens."""
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    ds = StreamingDataset(path, item_loader=TokensLoader(block_size=SEQ), shuffle=True, seed=SEED)
    return StreamingDataLoader(ds, batch_size=batch, num_workers=WORKERS)


def fastload_loader(
    path: str,
    batch: int,
    images: bool,
    planned: bool = False,
    persistent: bool = False,
    backend: str = "cpu",
):
    """fastload's DataLoader as a drop-in: torch's arguments (shuffle=True, a seeded
    generator), so the order comes from torch's RandomSampler as in the torch row.
    ``planned``: seed= instead, fastload's own (seed, epoch) plan (resumable, DDP-aware).
    ``persistent``: persistent_workers=True (workers, and what they opened, last across
    epochs). ``backend="dali"``: images decoded by DALI (its CPU backend here) in the
    consumer, the workers only reading them."""
    import torch

    import fastload

    kw = dict(batch_size=batch, shuffle=True, num_workers=WORKERS, persistent_workers=persistent)
    if images:
        kw["decode"] = {"image": fastload.ImageDecode(size=SIZE, train=True, backend=backend)}
    ds = fastload.Dataset(path)
    if planned:
        return fastload.DataLoader(ds, seed=SEED, **kw)
    return fastload.DataLoader(ds, generator=torch.Generator().manual_seed(SEED), **kw)


# ---------------------------------------------------------------- images contenders


class ImageFiles:
    """An ImageFolder with torchvision's ImageNet training transform, done with PIL."""

    def __init__(self, root: str):
        self.items = list_images(root)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as img:
            return to_chw(augment(img)), label


def torch_images(root: str, batch: int):
    import torch

    return torch.utils.data.DataLoader(
        ImageFiles(root), batch_size=batch, shuffle=True, num_workers=WORKERS
    )


def wds_images(root: str, batch: int):
    """WebDataset as its README trains: shard shuffle, sample shuffle buffer, decode, augment,
    batch inside the workers, WebLoader on top."""
    import webdataset as wds

    urls = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith(".tar"))
    ds = (
        wds.WebDataset(urls, shardshuffle=len(urls), seed=SEED)
        .shuffle(1000)
        .decode("pil")
        .map(lambda s: (to_chw(augment(s["jpg"])), s["cls"]))
        .batched(batch, partial=True)
    )
    return wds.WebLoader(ds, batch_size=None, num_workers=WORKERS)


class Dali:
    """DALI's CPU pipeline (device_id=None) through its PyTorch iterator, one epoch per
    iteration. ``fused``: decoders.image_random_crop (decodes only the crop's region),
    DALI's own ImageNet recipe, instead of decoders.image + random_resized_crop."""

    def __init__(self, root: str, batch: int, fused: bool = False):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        @pipeline_def(batch_size=batch, num_threads=WORKERS, device_id=None, seed=SEED)
        def pipe():
            jpegs, labels = fn.readers.file(file_root=root, random_shuffle=True, name="Reader")
            if fused:
                images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
                images = fn.resize(images, size=[SIZE, SIZE])
            else:
                images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
                images = fn.random_resized_crop(images, size=SIZE)
            return fn.flip(images, horizontal=fn.random.coin_flip()), labels

        self.it = DALIGenericIterator(
            pipe(),
            ["image", "label"],
            reader_name="Reader",
            last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=True,
        )

    def __iter__(self):
        for out in self.it:
            yield out[0]  # one pipeline: its dict of torch tensors


# ---------------------------------------------------------------- measuring


SPIN_S = 2e-4  # the end of a step spun, not slept: sleep() overshoots by ~0.1 ms here


def step(seconds: float) -> None:
    """A fake training step that waits on a GPU: the CPU thread sleeps, leaving the cores to
    the loader, and spins only the last SPIN_S so that sleep's overshoot does not stretch the
    step (which would lower the load asked of the loader)."""
    end = time.perf_counter() + seconds
    if seconds > SPIN_S:
        time.sleep(seconds - SPIN_S)
    while time.perf_counter() < end:
        pass


def batch_size_of(batch) -> int:
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    return len(batch)


def describe(batch) -> dict:
    """Shape and dtype of each tensor in the first batch, to check all contenders alike."""
    items = (
        batch.items()
        if isinstance(batch, dict)
        else enumerate(batch)
        if isinstance(batch, (tuple, list))
        else [("0", batch)]
    )
    return {str(k): f"{tuple(v.shape)} {v.dtype}" for k, v in items if hasattr(v, "shape")}


def draw(loader, it, wanted: int, seconds: float, step_s: float = 0.0, wrap: bool = True) -> tuple:
    """Draw up to ``wanted`` batches or stop after ``seconds``, with a fake step of
    ``step_s`` before each. At the end of an epoch: ``wrap`` starts the next one (its
    start-up counts), else stops. Returns (iterator or None, arrival times, sizes, seconds
    spent inside next())."""
    times, sizes, waited = [], [], 0.0
    stop = time.perf_counter() + seconds
    while len(times) < wanted and time.perf_counter() < stop:
        if step_s:
            step(step_s)
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            if not wrap:
                return None, times, sizes, waited
            it = iter(loader)
            batch = next(it)
        now = time.perf_counter()
        waited += now - start
        times.append(now)
        sizes.append(batch_size_of(batch))
        del batch
    return it, times, sizes, waited


def rate(times: list[float], sizes: list[int]) -> dict:
    """samples/s over the batches after the first WARM (with 2 workers the first two arrive
    together), timed from the arrival of batch WARM."""
    if len(times) <= WARM:
        raise RuntimeError(f"only {len(times)} batches: too few to measure")
    span = times[-1] - times[WARM - 1]
    return {
        "samples_per_s": sum(sizes[WARM:]) / span,
        "seconds": span,
        "batches": len(times),
        "mean_batch_s": span / (len(times) - WARM),
    }


def first_batch(build) -> tuple:
    """(loader, its iterator, seconds from building the loader to its first batch, the
    first batch's size and description). Imports are done before. loader.py samples this
    process tree's memory only once told that the first batch is in."""
    start = time.perf_counter()
    loader = build()
    it = iter(loader)
    first = next(it)
    took = time.perf_counter() - start
    _procmem.say_first_batch()
    return loader, it, took, batch_size_of(first), describe(first)


def measure(
    build,
    *,
    epoch0_seconds: float,
    batches: int,
    seconds: float,
    stall_batches: int,
    stall_seconds: float,
    step_factor: float,
    min_step: float,
    fixed_step: float = 0.0,
) -> dict:
    """The protocol, the same for every contender; ``phases`` holds each phase's
    [start, end] in time.perf_counter() (CLOCK_MONOTONIC: loader.py's memory samples are
    placed on the same clock):

    1. first: from building the dataset and loader to the first batch (imports done before);
    2. epoch0: the rest of that first epoch (at most ``epoch0_seconds``): samples/s of the
       first epoch, whatever caches the loader fills on it empty (the page cache warm);
    3. steady: a new iteration (epoch 1 on), up to ``batches`` batches or ``seconds``:
       samples/s of the later epochs;
    4. stall: a new iteration in which a step sleeping T consumes each batch, T =
       max(``min_step``, ``step_factor`` x the steady time per batch), i.e. the loader is
       asked for 80% of its own steady rate unless that is under ``min_step`` a batch;
       stall = time inside next() / the pass's time (its first batch left out); load = the
       rate the pass reached / the steady rate;
    5. fixed (with ``fixed_step``): the same with T = ``fixed_step`` for every contender."""
    phases = {}
    t0 = time.perf_counter()
    loader, it, first_s, first_size, shape = first_batch(build)
    phases["first"] = [t0, time.perf_counter()]
    result = {"first_batch_s": first_s, "batch": shape}
    first_at = time.perf_counter()
    cpu0 = time.thread_time()
    end, times, sizes, _ = draw(loader, it, 1 << 62, epoch0_seconds, wrap=False)
    epoch0_cpu = time.thread_time() - cpu0
    phases["epoch0"] = [first_at, time.perf_counter()]
    result["epoch0"] = {
        **rate([first_at, *times], [first_size, *sizes]),
        "complete": end is None,  # else it was cut at epoch0_seconds
        "main_cpu_us": 1e6 * epoch0_cpu / max(1, len(times)),
    }
    del it, end
    begin = time.perf_counter()
    it = iter(loader)
    cpu0 = time.thread_time()
    it, times, sizes, _ = draw(loader, it, batches, seconds)
    main_cpu = time.thread_time() - cpu0
    phases["steady"] = [begin, time.perf_counter()]
    steady = rate(times, sizes)
    result.update(
        samples_per_s=steady["samples_per_s"],
        steady=steady,
        # the consumer thread's CPU per batch (the loader's own work in the main
        # process: receiving, collating, handing out); threads of DALI not included
        main_cpu_us=1e6 * main_cpu / max(1, len(times)),
    )
    passes = []
    if stall_batches:
        passes.append(("stall", max(min_step, step_factor * steady["mean_batch_s"])))
        if fixed_step:
            passes.append(("fixed", max(min_step, fixed_step)))
    for name, step_s in passes:
        del it  # ends the epoch in flight (torch-style loaders stop their workers)
        it = iter(loader)
        next(it)
        begin = time.perf_counter()
        own0, all0 = time.thread_time(), time.process_time()
        # stall_batches counts the first batch, as ``batches`` does: a pass of one epoch ends
        # with it (drawing one more started the next epoch, workers and all, inside the pass)
        it, _, sizes, waited = draw(loader, it, stall_batches - 1, stall_seconds, step_s)
        total = time.perf_counter() - begin
        # CPU of the training process's other threads (a loader's own, DALI's) per batch:
        # work a loader does during the step rather than inside next()
        others = (time.process_time() - all0) - (time.thread_time() - own0)
        phases[name] = [begin, time.perf_counter()]
        result[f"stall_{name}"] = {
            "pct": 100 * waited / total,
            "other_threads_cpu_us": 1e6 * others / max(1, len(sizes)),
            "load_pct": 100 * len(sizes) / total * steady["mean_batch_s"],
            "batches": len(sizes),
            "seconds": total,
            "step_s": step_s,
        }
    if hasattr(loader, "stats"):  # fastload's own account, over all passes
        result["loader_stats"] = loader.stats()
    if hasattr(loader, "_slabs"):  # fastload: batch buffers it ended with (growth shows here)
        result["slabs"] = {
            "count": len(loader._slabs),
            "mb": len(loader._slabs) * loader._slabs.slab_size / 1e6,
        }
    del it
    result["phases"] = phases
    return result


def measure_pass(build, *, batches: int, seconds: float) -> dict:
    """remote.py's protocol: the first batch, then one pass of up to ``batches`` batches
    (or ``seconds``) from that same iteration, starting new epochs as needed: samples/s
    after the first WARM batches, and the whole pass (``samples``, ``last_batch_s``)."""
    t0 = time.perf_counter()
    loader, it, first_s, first_size, shape = first_batch(build)
    first_at = time.perf_counter()
    cpu0 = time.thread_time()
    it, times, sizes, _ = draw(loader, it, batches - 1, seconds)
    main_cpu = time.thread_time() - cpu0
    times, sizes = [first_at, *times], [first_size, *sizes]
    steady = rate(times, sizes)
    result = {
        "first_batch_s": first_s,
        "batch": shape,
        "samples_per_s": steady["samples_per_s"],
        "steady": steady,
        "samples": sum(sizes),
        "last_batch_s": times[-1] - t0,
        "main_cpu_us": 1e6 * main_cpu / max(1, len(times) - 1),
        "phases": {"first": [t0, first_at], "steady": [first_at, time.perf_counter()]},
    }
    if hasattr(loader, "stats"):
        result["loader_stats"] = loader.stats()
    del it
    return result


def measure_first(build) -> dict:
    """Time to first batch alone (loader.py drops the data's pages first for a cold one)."""
    t0 = time.perf_counter()
    loader, it, first_s, _, shape = first_batch(build)
    out = {"first_batch_s": first_s, "batch": shape, "phases": {"first": [t0, time.perf_counter()]}}
    del it, loader
    return out


def pil_limit(root: str, epochs: int, draft: bool = False) -> dict:
    """The two-core PIL limit: 2 processes, each decoding + cropping + resizing + flipping
    every other image, single-threaded, no loader; rate = images / (last end - first start).
    ``draft``: with augment_draft's scaled decode."""
    from multiprocessing import get_context

    _procmem.say_first_batch()  # no first batch here: memory is sampled from the start
    paths = [p for p, _ in list_images(root)]
    work = [(paths[k::WORKERS] * epochs, draft) for k in range(WORKERS)]
    with get_context("fork").Pool(WORKERS) as pool:
        spans = pool.starmap(_pil_share, work, chunksize=1)
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    return {
        "samples_per_s": len(paths) * epochs / (end - start),
        "steady_s": end - start,
        "batches": None,
        "first_batch_s": None,
        "batch": {"0": f"({SIZE}, {SIZE}, 3) uint8"},
    }


def _pil_share(paths: list[str], draft: bool) -> tuple[float, float]:
    from PIL import Image

    work = augment_draft if draft else augment
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    for path in paths:
        with Image.open(path) as img:
            work(img)
    return start, time.perf_counter()


BUILDERS = {
    "torch-tokens": lambda d, b: torch_tokens(d, b),
    "gather-tokens": lambda d, b: Gather(d, b),
    "streaming-tokens": lambda d, b: streaming_loader(d, b, images=False),
    "litdata-tokens": lambda d, b: litdata_tokens(d, b),
    "fastload-tokens": lambda d, b: fastload_loader(d, b, images=False),
    "fastload-planned-tokens": lambda d, b: fastload_loader(d, b, images=False, planned=True),
    "fastload-persistent-tokens": lambda d, b: fastload_loader(d, b, images=False, persistent=True),
    "torch-images": lambda d, b: torch_images(d, b),
    "wds-images": lambda d, b: wds_images(d, b),
    "streaming-images": lambda d, b: streaming_loader(d, b, images=True),
    "dali-images": lambda d, b: Dali(d, b),
    "dali-fused-images": lambda d, b: Dali(d, b, fused=True),
    "fastload-images": lambda d, b: fastload_loader(d, b, images=True),
    "fastload-dali-images": lambda d, b: fastload_loader(d, b, images=True, backend="dali"),
}


IMPORTS = {  # by the kind's first word
    "torch": ["torch", "PIL.Image"],
    "gather": ["torch"],
    "streaming": ["torch", "streaming", "PIL.Image"],
    "litdata": ["torch", "litdata"],
    # fastload imports its loader lazily, on first use of DataLoader: before the clock too
    "fastload": ["torch", "fastload", "fastload.loader"],
    "wds": ["torch", "webdataset", "PIL.Image"],
    "dali": ["torch", "nvidia.dali", "nvidia.dali.plugin.pytorch"],
    "pil": ["PIL.Image"],
}
S3_IMPORTS = {"fastload": ["s3fs"], "streaming": ["boto3"]}  # its S3 client, for s3:// data
KIND_IMPORTS = {
    "fastload-images": ["PIL.Image", "fastload.decode"],  # decodes with Pillow, as PIL rows do
    "fastload-dali-images": [
        "nvidia.dali",
        "nvidia.dali.plugin.pytorch",
        "fastload.decode",
        "fastload.decode.dali",
    ],
}


def imports_of(kind: str) -> list[str]:
    """The libraries a contender imports before the clock starts."""
    return IMPORTS[kind.split("-")[0]] + KIND_IMPORTS.get(kind, [])


def versions() -> dict:
    """What this process ran with (the Streaming rows run from another venv)."""
    from importlib import metadata

    out = {"python": sys.executable, "python_version": sys.version.split()[0]}
    for dist in [
        "torch",
        "numpy",
        "pillow",
        "mosaicml-streaming",
        "litdata",
        "webdataset",
        "nvidia-dali-cuda120",
        "fastload",
    ]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------- writers


def write_wds(src: str, dst: str, shards: int) -> dict:
    """WebDataset tars from the image folder, in ImageFolder order, ``shards`` equal shards
    (an even count splits evenly over 2 workers)."""
    import webdataset as wds

    items = list_images(src)
    per = -(-len(items) // shards)
    os.makedirs(dst)
    with wds.ShardWriter(
        os.path.join(dst, "shard-%06d.tar"), maxcount=per, maxsize=1 << 40, verbose=0
    ) as sink:
        for i, (path, label) in enumerate(items):
            with open(path, "rb") as f:
                sink.write({"__key__": f"{i:08d}", "jpg": f.read(), "cls": label})
    return {"records": len(items)}


def write_mds_tokens(src: str, dst: str, shard_bytes: int = 64 << 20) -> dict:
    """MDS shards (``shard_bytes``, 64 MB by default; uncompressed) with one fixed-shape
    ndarray column."""
    from streaming import MDSWriter

    n = os.path.getsize(src) // 2 // SEQ
    tokens = np.memmap(src, np.uint16, "r", shape=(n, SEQ))
    with MDSWriter(
        out=dst, columns={"tokens": f"ndarray:uint16:{SEQ}"}, size_limit=shard_bytes
    ) as w:
        for i in range(n):
            w.write({"tokens": np.array(tokens[i])})
    return {"records": n}


def _litdata_samples(span: tuple[str, int, int]):
    import torch

    path, lo, hi = span
    n = os.path.getsize(path) // 2 // SEQ
    tokens = np.memmap(path, np.uint16, "r", shape=(n, SEQ))
    for i in range(lo, hi):
        yield torch.from_numpy(np.array(tokens[i]))


def write_litdata_tokens(src: str, dst: str) -> dict:
    """litdata.optimize with TokensLoader, chunks of 8192 samples (~32 MB), 2 workers."""
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    n = os.path.getsize(src) // 2 // SEQ
    spans = [(src, lo, min(n, lo + 1024)) for lo in range(0, n, 1024)]
    optimize(
        fn=_litdata_samples,
        inputs=spans,
        output_dir=dst,
        chunk_size=SEQ * 8192,
        item_loader=TokensLoader(),
        num_workers=WORKERS,
        mode="overwrite",
    )
    return {"records": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "what", choices=["run", "imports", "write-wds", "write-mds-tokens", "write-litdata-tokens"]
    )
    p.add_argument("kind_or_src", help="run: a contender; writers: the source")
    p.add_argument("data", help="run: its data; writers: the destination")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--protocol",
        choices=["epochs", "pass", "first"],
        default="epochs",
        help="epochs: loader.py's (see measure); pass: remote.py's one pass (measure_pass); "
        "first: the time to the first batch alone",
    )
    p.add_argument(
        "--epoch0-seconds", type=float, default=60, help="the first epoch: at most this long"
    )
    p.add_argument("--batches", type=int, default=1000, help="batches in the steady pass")
    p.add_argument("--stall-batches", type=int, default=500, help="batches in the stall pass")
    p.add_argument("--seconds", type=float, default=10, help="steady pass: at most this long")
    p.add_argument("--stall-seconds", type=float, default=4, help="stall passes: at most this long")
    p.add_argument(
        "--step-factor",
        type=float,
        default=1.25,
        help="the stall pass's step, as a multiple of the steady time per batch",
    )
    p.add_argument(
        "--min-step", type=float, default=1e-3, help="the shortest step (seconds; default 1 ms)"
    )
    p.add_argument(
        "--fixed-step",
        type=float,
        default=0.0,
        help="one more stall pass with a step sleeping this long (seconds)",
    )
    p.add_argument("--epochs", type=int, default=1, help="pil-limit: passes over the images")
    p.add_argument("--shards", type=int, default=10, help="write-wds: shards")
    p.add_argument("--shard-bytes", type=int, default=64 << 20, help="write-mds-tokens: size_limit")
    a = p.parse_args()
    if a.what == "imports":  # the import footprint alone, for loader.py to measure
        for module in imports_of(a.kind_or_src):
            importlib.import_module(module)
        time.sleep(1)
        result = {}
    elif a.what == "run" and a.kind_or_src in ("pil-limit", "pil-draft-limit"):
        result = pil_limit(a.data, a.epochs, draft=a.kind_or_src == "pil-draft-limit")
    elif a.what == "run":
        first = a.kind_or_src.split("-")[0]
        remote = S3_IMPORTS.get(first, []) if a.data.startswith("s3://") else []
        for module in imports_of(a.kind_or_src) + remote:  # before the clock
            importlib.import_module(module)

        def build():
            return BUILDERS[a.kind_or_src](a.data, a.batch)

        if a.protocol == "first":
            result = measure_first(build)
        elif a.protocol == "pass":
            result = measure_pass(build, batches=a.batches, seconds=a.seconds)
        else:
            result = measure(
                build,
                epoch0_seconds=a.epoch0_seconds,
                batches=a.batches,
                seconds=a.seconds,
                stall_batches=a.stall_batches,
                stall_seconds=a.stall_seconds,
                step_factor=a.step_factor,
                min_step=a.min_step,
                fixed_step=a.fixed_step,
            )
    elif a.what == "write-wds":
        result = write_wds(a.kind_or_src, a.data, a.shards)
    elif a.what == "write-mds-tokens":
        result = write_mds_tokens(a.kind_or_src, a.data, a.shard_bytes)
    else:
        result = write_litdata_tokens(a.kind_or_src, a.data)
    print(json.dumps({**result, "versions": versions()}, default=str))


if __name__ == "__main__":
    main()
