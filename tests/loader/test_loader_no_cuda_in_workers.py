"""Worker processes never touch CUDA. They are forked (the default start method) from the
training process, whose CUDA context is initialised by the time a non-persistent loader forks
its second epoch's workers; a forked child is only safe as long as it makes no CUDA call.

Here every entry into CUDA that torch and fastload's core offer (initialisation, device
queries, streams, events, pinning, copies to a device) is replaced, in the training process
before the workers are forked, by a tripwire that lets that process through and records any
other process that calls it. Every loader feature that runs in the workers (images decoded and
finished, token rows, a transform, shared image batches and shared blocks, skipped records)
runs for several epochs of fresh workers, and no tripwire may have been touched. The same
check with a GPU, CUDA initialised for real in between, runs where there is one (marked cuda).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch

import fastload

pytestmark = pytest.mark.timeout(180)

# torch.cuda entries that initialise CUDA or need a context, and the Tensor methods that do.
CUDA_FUNCTIONS = (
    "_lazy_init",
    "init",
    "is_available",
    "device_count",
    "current_device",
    "set_device",
    "current_stream",
    "default_stream",
    "synchronize",
    "cudart",
    "get_device_properties",
    "mem_get_info",
    "memory_allocated",
)
CUDA_CLASSES = ("Stream", "Event", "ExternalStream", "device", "stream")
TENSOR_METHODS = ("cuda", "pin_memory", "is_pinned", "record_stream")
CORE_FUNCTIONS = ("cuda_available", "cuda_device_count")


class Tripwires:
    """Wraps each CUDA entry so that a call from any process but this one is appended to a
    file (and raises there); ``touched()`` lists them."""

    def __init__(self, monkeypatch, log, classes: bool = True) -> None:
        self.log = str(log)
        self.pid = os.getpid()
        # (classes replaced by functions break isinstance() in a process that uses CUDA: with
        # a GPU only the functions, which anything that makes a stream or event calls too)
        for name in CUDA_FUNCTIONS + (CUDA_CLASSES if classes else ()):
            if hasattr(torch.cuda, name):
                monkeypatch.setattr(
                    torch.cuda, name, self.wrap(f"torch.cuda.{name}", getattr(torch.cuda, name))
                )
        for name in TENSOR_METHODS:
            monkeypatch.setattr(
                torch.Tensor, name, self.wrap(f"Tensor.{name}", getattr(torch.Tensor, name))
            )
        for name in CORE_FUNCTIONS:
            monkeypatch.setattr(
                fastload._core, name, self.wrap(f"_core.{name}", getattr(fastload._core, name))
            )
        original_to = torch.Tensor.to

        def to(tensor, *args, **kwargs):
            target = [
                a for a in (*args, kwargs.get("device")) if isinstance(a, (str, torch.device))
            ]
            if any(torch.device(t).type == "cuda" for t in target):
                self.record("Tensor.to(cuda)")
            return original_to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", to)

    def wrap(self, name: str, original):
        def tripwire(*args, **kwargs):
            self.record(name)
            return original(*args, **kwargs)

        return tripwire

    def record(self, name: str) -> None:
        if os.getpid() == self.pid:
            return
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {name}\n")
        raise RuntimeError(f"a loader worker called {name}")

    def touched(self) -> list[str]:
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return f.read().splitlines()


def jpeg(i: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 256, (30 + i % 7, 40, 3), dtype=np.uint8)
    f = io.BytesIO()
    Image.fromarray(pixels).save(f, "JPEG")
    return f.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nocuda")
    schema = {"image": "image", "tokens": "uint16[17]", "label": "int64"}
    paths = {}
    for compression in ("none", "zstd"):
        paths[compression] = root / compression
        with fastload.Writer(paths[compression], schema, compression=compression) as w:
            for i in range(96):
                w.write(
                    {
                        "image": jpeg(i) if i != 50 else jpeg(i)[:200],
                        "tokens": np.full(17, i % 11, np.uint16),
                        "label": i,
                    }
                )
    return paths


def loaders(paths, device=None) -> list:
    """Loaders that use every part of the workers' code, each forking new workers per epoch."""
    image = fastload.ImageDecode(16, normalize="imagenet", dtype=torch.bfloat16)
    tokens = fastload.TokenDecode()
    skip = fastload.SkipBadSamples(max_fraction=0.1)
    kw = dict(num_workers=2, seed=0, shuffle=True, device=device, bad_samples=skip)
    raw, packed = fastload.Dataset(paths["none"]), fastload.Dataset(paths["zstd"])
    return [
        # shared image batches, finished in the workers (without a GPU), tokens
        fastload.DataLoader(raw, batch_size=32, decode={"image": image, "tokens": tokens}, **kw),
        # whole batches of eval crops, uint8, and a transform
        fastload.DataLoader(
            raw,
            batch_size=8,
            decode={"image": fastload.ImageDecode(16, train=False)},
            transform=lambda s: {"mean": torch.tensor(float(s["image"].mean())), "y": s["label"]},
            **kw,
        ),
        # compressed token rows shared out by block among the workers
        fastload.DataLoader(packed, batch_size=16, decode={"tokens": tokens}, **kw),
        # a pinned loader's slabs (registered with CUDA where there is one)
        fastload.DataLoader(raw, batch_size=16, pin_memory=device is not None, **kw),
    ]


def run_epochs(paths, device=None, epochs: int = 2) -> list:
    out = []
    for loader in loaders(paths, device):
        for _ in range(epochs):
            out.append([{k: v for k, v in b.items()} for b in loader])
    return out


def test_workers_never_touch_cuda(data, monkeypatch, tmp_path):
    wires = Tripwires(monkeypatch, tmp_path / "touched")
    # a tripwire works: called here, nothing; in a forked child, recorded
    torch.cuda.is_available()
    pid = os.fork()
    if pid == 0:
        try:
            torch.cuda.is_available()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert [line.split()[1] for line in wires.touched()] == ["torch.cuda.is_available"]
    os.remove(wires.log)
    batches = run_epochs(data)
    assert wires.touched() == []
    assert all(len(epoch) > 0 for epoch in batches)


@pytest.mark.cuda
def test_workers_forked_after_cuda_is_initialised_never_touch_it(data, monkeypatch, tmp_path):
    """CUDA initialised for real (batches to the GPU, registered slabs) before every epoch's
    workers are forked: the epochs complete, their batches are right, and no worker called
    CUDA."""
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    want = run_epochs(data)  # on the CPU, for the values
    wires = Tripwires(monkeypatch, tmp_path / "touched", classes=False)
    got = run_epochs(data, device="cuda", epochs=2)
    torch.cuda.synchronize()
    assert wires.touched() == []
    for a, b in zip(want, got, strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            for key, value in x.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, y[key].cpu()), key
