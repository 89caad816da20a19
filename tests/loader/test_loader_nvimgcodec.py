"""Image fields decoded by NVIDIA nvImageCodec in the training process
(``ImageDecode(backend="nvimgcodec")``), on its CPU backend here (the GPU tests are at the end,
marked cuda). The workers draw the same crops and flips as for the CPU decoder, so the two
backends' pixels differ only by resampling; a bad image names its record, or is skipped within
the budget with every field of its row; dtype= and normalize= finish its pixels as the CPU
decoder's."""

from __future__ import annotations

import pytest
import torch

import fastload
from fastload.decode import DecodeError

from .imagetools import BAD, BATCH, SIZE, N, assert_normalized, check_rows, write

pytest.importorskip("nvidia.nvimgcodec")  # the test extra installs it (with DALI)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write(tmp_path_factory.mktemp("nvimgcodec") / "ds")


@pytest.fixture(scope="module")
def with_bad(tmp_path_factory):
    return write(tmp_path_factory.mktemp("nvimgcodec") / "bad", bad=BAD)


def epoch(path, backend="nvimgcodec", train=True, layout="HWC", **kw) -> list[dict]:
    kw.setdefault("num_workers", 2)
    kw.setdefault("batch_size", BATCH)
    kw.setdefault("seed", 4)
    kw.setdefault("shuffle", True)
    kw.setdefault(
        "decode", {"image": fastload.ImageDecode(SIZE, train=train, layout=layout, backend=backend)}
    )
    with fastload.Dataset(path) as ds:
        loader = fastload.DataLoader(ds, **kw)
        return [
            {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            for b in loader
        ]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_the_cpu_decoders_crops_and_flips(images, train, layout):
    cpu = epoch(images, "cpu", train, layout)
    got = epoch(images, "nvimgcodec", train, layout)
    assert len(got) == len(cpu) == -(-N // BATCH)
    width = 2 if layout == "HWC" else 3
    for a, b in zip(cpu, got):
        assert torch.equal(a["label"], b["label"]) and a["name"] == b["name"]
        assert b["image"].dtype == torch.uint8 and b["image"].shape == a["image"].shape
        diff = (a["image"].float() - b["image"].float()).abs()
        assert diff.mean() < 1.0 and diff.max() <= 6  # resampling only
        if train:  # mirrored, the rows would differ widely: the flips are the same
            assert (a["image"].flip(width).float() - b["image"].float()).abs().mean() > 20
    assert sorted(check_rows(got, layout)) == list(range(N))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalize_and_dtype_finish_its_pixels(images, dtype):
    plain = epoch(images, layout="CHW")
    spec = fastload.ImageDecode(SIZE, backend="nvimgcodec", normalize="imagenet", dtype=dtype)
    got = epoch(images, decode={"image": spec})
    for a, b in zip(plain, got, strict=True):
        assert torch.equal(a["label"], b["label"])
        assert b["image"].dtype == dtype and b["image"].shape[1:] == (3, SIZE, SIZE)
        assert_normalized(b["image"], a["image"], "CHW")


@pytest.mark.parametrize("num_workers,worker_type", [(0, "process"), (2, "thread")])
def test_workers_do_not_change_its_pixels(images, num_workers, worker_type):
    reference = epoch(images)
    got = epoch(images, num_workers=num_workers, worker_type=worker_type)
    assert len(got) == len(reference)
    for a, b in zip(reference, got):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_a_bad_image_names_its_record(with_bad):
    with pytest.raises(DecodeError, match=f"dataset record {BAD}: nvImageCodec cannot read"):
        epoch(with_bad, shuffle=False, seed=None)


def test_bad_images_are_skipped_with_their_rows(with_bad, images):
    got = epoch(with_bad, bad_samples="skip")
    labels = check_rows(got)
    assert sorted(labels) == [i for i in range(N) if i != BAD]
    want = {int(x): img for b in epoch(images) for x, img in zip(b["label"], b["image"])}
    for b in got:  # rows decoded again without the bad one keep their own crops
        for label, img in zip(b["label"].tolist(), b["image"]):
            assert torch.equal(img, want[label]), label


def test_batches_kept_are_not_overwritten(images):
    """Its CPU pixels go into buffers reused once their batch is garbage (as slabs are)."""
    reference = epoch(images)
    decode = {"image": fastload.ImageDecode(SIZE, backend="nvimgcodec")}
    with fastload.Dataset(images) as ds:
        loader = fastload.DataLoader(ds, batch_size=BATCH, seed=4, shuffle=True, decode=decode)
        kept = [b["image"] for b in loader]
        for _ in range(2):
            for b in loader:
                del b
    for a, image in zip(reference, kept, strict=True):
        assert torch.equal(a["image"], image)


# ----------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.mark.cuda
@pytest.mark.parametrize("train", [True, False])
def test_on_the_gpu_the_cpu_decoders_crops(images, train):
    cpu = epoch(images, "cpu", train)
    gpu = epoch(images, "nvimgcodec", train, device="cuda")
    assert len(gpu) == len(cpu)
    for a, b in zip(cpu, gpu):
        assert b["image"].is_cuda and b["label"].is_cuda
        assert torch.equal(a["label"], b["label"].cpu())
        diff = (a["image"].float() - b["image"].cpu().float()).abs()
        assert diff.mean() < 1.5  # nvJPEG and torch's resize on the GPU: a little apart
        if train:
            mirrored = (a["image"].flip(2).float() - b["image"].cpu().float()).abs()
            assert mirrored.mean() > 20


@pytest.mark.cuda
def test_on_the_gpu_finished_bf16_as_the_cpu_finishes_its_pixels(images):
    plain = epoch(images, "nvimgcodec", layout="CHW", device="cuda")
    spec = fastload.ImageDecode(
        SIZE, backend="nvimgcodec", normalize="imagenet", dtype=torch.bfloat16
    )
    got = epoch(images, decode={"image": spec}, device="cuda")
    torch.cuda.synchronize()
    for a, b in zip(plain, got, strict=True):
        assert b["image"].is_cuda and b["image"].dtype == torch.bfloat16
        assert_normalized(b["image"].cpu(), a["image"].cpu(), "CHW")


@pytest.mark.cuda
def test_on_the_gpu_bad_images_are_skipped(with_bad):
    got = epoch(with_bad, bad_samples="skip", device="cuda")
    labels = torch.cat([b["label"].cpu() for b in got]).tolist()
    assert sorted(labels) == [i for i in range(N) if i != BAD]
