"""Batches finished on the GPU (``device="cuda"``): the slab's uint8 pixels and uint16 tokens
are copied on the loader's copy stream, the finishing kernels run on that stream right after,
and the current stream waits for them; the results are the CPU path's, bit for bit (the
kernels and the CPU loops share their per-element math). Every test here needs a CUDA GPU
(marked cuda: skipped without one; benchmarks/gpu_check.sh runs them on a GPU machine)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import fastload
from fastload.loader.device import copy_stream

pytestmark = [pytest.mark.cuda, pytest.mark.timeout(180)]

N = 96
SIZE = 32
LENGTH = 65


def jpeg(i: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 256, (40 + i % 9, 56 + i % 5, 3), dtype=np.uint8)
    f = io.BytesIO()
    Image.fromarray(pixels).save(f, "JPEG")
    return f.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu") / "ds"
    schema = {"image": "image", "label": "int64", "tokens": f"uint16[{LENGTH}]"}
    with fastload.Writer(path, schema) as w:
        for i in range(N):
            tokens = ((np.arange(LENGTH) * 13 + i * 977) % 65536).astype(np.uint16)
            w.write({"image": jpeg(i), "label": i, "tokens": tokens})
    return path


def batches(path, device=None, **kw) -> list[dict]:
    kw.setdefault("batch_size", 32)
    kw.setdefault("num_workers", 2)
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(ds, shuffle=True, seed=0, device=device, **kw)
        out = [dict(b) for b in loader]
    if device is not None:
        torch.cuda.synchronize()
    return out


def assert_same(cpu: list[dict], gpu: list[dict]) -> None:
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu, strict=True):
        assert list(a) == list(b)
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert b[key].is_cuda and b[key].dtype == value.dtype, key
                assert torch.equal(b[key].cpu(), value), key
            else:
                assert b[key] == value, key


def test_the_issues_example_bf16_images_and_labels_on_the_gpu(data):
    spec = fastload.ImageDecode(
        SIZE,
        train=True,
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        normalize="imagenet",
        dtype=torch.bfloat16,
    )
    gpu = batches(data, "cuda", decode={"image": spec})
    first = gpu[0]
    assert first["image"].shape == (32, 3, SIZE, SIZE) and first["image"].dtype == torch.bfloat16
    assert first["image"].is_cuda and first["label"].is_cuda
    assert -2.2 < first["image"].float().min() < -1.5 and 2.0 < first["image"].float().max() < 2.7
    assert_same(batches(data, decode={"image": spec}), gpu)  # the CPU path's bits


@pytest.mark.parametrize(
    "spec",
    [
        fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.float32),
        fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.float16, layout="HWC"),
        fastload.ImageDecode(SIZE, train=False, dtype=torch.bfloat16),
        fastload.ImageDecode(SIZE, layout="CHW"),  # uint8: copied as it is
    ],
)
def test_every_dtype_and_layout_as_the_cpu_path(data, spec):
    assert_same(
        batches(data, decode={"image": spec}), batches(data, "cuda", decode={"image": spec})
    )


@pytest.mark.parametrize("spec", [fastload.TokenDecode(), fastload.TokenDecode(shift=False)])
def test_the_issues_token_example(data, spec):
    """The uint16 rows cross to the GPU as they are and are widened (and shifted) there."""
    gpu = batches(data, "cuda", batch_size=16, decode={"tokens": spec})
    b = gpu[0]
    width = LENGTH - 1 if spec.shift else LENGTH
    assert b["tokens"].shape == (16, width) and b["tokens"].dtype == torch.int64
    if spec.shift:
        assert b["tokens_targets"].shape == (16, width) and b["tokens_targets"].is_cuda
        assert torch.equal(b["tokens"][:, 1:], b["tokens_targets"][:, :-1])
    assert_same(batches(data, batch_size=16, decode={"tokens": spec}), gpu)


def test_used_at_once_on_the_current_stream(data):
    """Each batch is read by a kernel on the current stream as soon as it is handed out, with
    the slabs reused all along (few slabs, batches dropped): the current stream waited for the
    copy and the finishing, so every sum is the CPU path's."""
    spec = fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.float32)
    tokens = fastload.TokenDecode()
    decode = {"image": spec, "tokens": tokens}
    cpu = batches(data, batch_size=8, decode=decode)
    want_images = [b["image"].double().sum().item() for b in cpu]
    want_tokens = [b["tokens_targets"].sum().item() for b in cpu]
    with fastload.Dataset(data) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=8,
            shuffle=True,
            seed=0,
            num_workers=2,
            prefetch_factor=1,
            device="cuda",
            decode=decode,
        )
        for _ in range(3):
            loader.set_epoch(0)
            sums = [(b["image"].double().sum(), b["tokens_targets"].sum()) for b in loader]
            assert [a.item() for a, _ in sums] == pytest.approx(want_images, rel=1e-9)
            assert [t.item() for _, t in sums] == want_tokens


def test_inside_a_stream_of_the_users(data):
    spec = fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.bfloat16)
    want = batches(data, decode={"image": spec})
    mine = torch.cuda.Stream()
    with torch.cuda.stream(mine):
        got = batches(data, "cuda", decode={"image": spec})
        sums = [b["image"].float().sum() for b in got]  # queued on mine, after the event
    mine.synchronize()
    for a, s in zip(want, sums, strict=True):
        assert s.item() == pytest.approx(a["image"].float().sum().item(), rel=1e-5)


def test_a_slab_is_not_reused_before_its_copy_ends(data):
    """The copy stream is held up (a kernel that sleeps, queued on it first): the batches'
    copies wait behind it while the loop goes on and drops each host batch. Their slabs must
    not be refilled before the copies read them: the pool grows instead, and every batch
    arrives intact."""
    spec = fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.float32)
    want = batches(data, batch_size=8, decode={"image": spec})
    with fastload.Dataset(data) as ds:
        loader = fastload.DataLoader(
            ds,
            batch_size=8,
            shuffle=True,
            seed=0,
            num_workers=2,
            prefetch_factor=1,
            device="cuda",
            decode={"image": spec},
        )
        slabs = len(loader._slabs)
        stream = copy_stream(torch.device("cuda", torch.cuda.current_device()))
        with torch.cuda.stream(stream):
            torch.cuda._sleep(2_000_000_000)  # about a second on current GPUs
        got = [b["image"] for b in loader]
        grew = len(loader._slabs) > slabs
    torch.cuda.synchronize()
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a["image"], b.cpu())
    assert grew  # the slabs under copies waiting were kept, not refilled


def test_pinned_batches_on_the_cpu(data):
    """pin_memory=True without device=: slabs (finished images in them) are registered, and
    what the training process finishes comes from torch's pinned memory."""
    spec = fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.bfloat16)
    got = batches(data, pin_memory=True, decode={"image": spec, "tokens": fastload.TokenDecode()})
    for b in got:
        assert b["image"].is_pinned() and b["label"].is_pinned()
        assert b["tokens"].is_pinned() and b["tokens_targets"].is_pinned()
        assert b["image"].to("cuda", non_blocking=True).dtype == torch.bfloat16


def test_pin_memory_on_the_general_path_is_torchs():
    data = [{"x": torch.full((4,), float(i))} for i in range(10)]  # not a fastload dataset
    loader = fastload.DataLoader(data, batch_size=5, pin_memory=True)
    assert not loader.fast
    got = list(loader)
    assert all(b["x"].is_pinned() for b in got)
    moved = list(fastload.DataLoader(data, batch_size=5, pin_memory=True, device="cuda"))
    assert all(b["x"].is_cuda for b in moved)
    assert torch.equal(moved[1]["x"].cpu(), got[1]["x"])


def test_gpu_memory_held_is_the_batches_in_use(data):
    """Batches handed out are new tensors from torch's caching allocator; a loop that drops
    each one holds about one batch's worth at a time, whatever the number of batches."""
    spec = fastload.ImageDecode(SIZE, normalize="imagenet", dtype=torch.float32)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with fastload.Dataset(data) as ds:
        loader = fastload.DataLoader(
            ds, batch_size=8, num_workers=2, device="cuda", decode={"image": spec}
        )
        for _ in range(2):
            for b in loader:
                b["image"].sum()
        del b
    torch.cuda.synchronize()
    one = 8 * 3 * SIZE * SIZE * 4
    assert torch.cuda.memory_allocated() - before < one
    assert torch.cuda.max_memory_allocated() - before < 12 * one
