"""The CUDA finishing kernels against the CPU path, bit for bit, on a non-default stream
(marked cuda: skipped without a GPU). The CPU path itself is checked against numpy in
test_finish.py, so these close the loop: GPU == CPU == reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fastload import _core
from fastload.decode import finish_images, finish_tokens

pytestmark = pytest.mark.cuda


def core_with_cuda() -> None:
    """Fails the test (not a skip) where fastload._core was built without its CUDA part on a
    machine with a GPU."""
    assert _core.core_has_cuda, (
        "fastload._core was built without its CUDA part on a machine with a GPU: rebuild it "
        "where nvcc is found (benchmarks/gpu_check.sh does)"
    )


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def pixels(shape: tuple, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


@pytest.mark.parametrize(
    "dtype, layout_in, layout_out",
    list(itertools.product(DTYPES, ["HWC", "CHW"], ["CHW", "channels_last"])),
)
def test_images_on_a_side_stream_equal_the_cpu_path(dtype, layout_in, layout_out):
    core_with_cuda()
    shape = (5, 37, 41, 3) if layout_in == "HWC" else (5, 3, 37, 41)
    x = pixels(shape)
    want = finish_images(x, dtype=dtype, layout_in=layout_in, layout_out=layout_out)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xd = x.cuda()
    got = finish_images(xd, dtype=dtype, layout_in=layout_in, layout_out=layout_out, stream=stream)
    stream.synchronize()
    assert got.device.type == "cuda" and got.dtype == dtype
    fmt = torch.channels_last if layout_out == "channels_last" else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt)
    assert torch.equal(got.cpu(), want)


def test_the_kernel_runs_on_the_given_stream_without_waiting():
    core_with_cuda()
    x = pixels((8, 64, 64, 3)).cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(200_000_000)  # keeps the stream busy for a while (~0.1 s)
    got = finish_images(x, stream=stream.cuda_stream)  # a raw cudaStream_t as an int
    # Queued behind the sleep on that stream, and the call returned before it ran.
    assert not stream.query()
    stream.synchronize()
    assert torch.equal(got.cpu(), finish_images(x.cpu()))


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_other_channel_counts(channels):
    core_with_cuda()
    mean, std = tuple(np.linspace(0.1, 0.9, channels)), tuple(np.linspace(0.2, 0.6, channels))
    x = pixels((3, 19, 23, channels))
    for dtype in DTYPES:
        got = finish_images(x.cuda(), mean=mean, std=std, dtype=dtype)
        assert torch.equal(got.cpu(), finish_images(x, mean=mean, std=std, dtype=dtype))


def test_every_pixel_value_and_the_grid_loops():
    core_with_cuda()
    # All 256 values per channel; more images than a grid's y extent (65535); an image with
    # more pixels than one x sweep of the grid covers (4096 blocks of 256).
    x = torch.arange(256, dtype=torch.uint8).repeat_interleave(3).view(1, 16, 16, 3)
    many = pixels((70_000, 1, 2, 3), seed=1)
    big = pixels((1, 3, 1100, 1000), seed=2)
    for dtype in DTYPES:
        assert torch.equal(
            finish_images(x.cuda(), dtype=dtype).cpu(), finish_images(x, dtype=dtype)
        )
        assert torch.equal(
            finish_images(many.cuda(), dtype=dtype).cpu(), finish_images(many, dtype=dtype)
        )
        got = finish_images(big.cuda(), dtype=dtype, layout_in="CHW", layout_out="channels_last")
        want = finish_images(big, dtype=dtype, layout_in="CHW", layout_out="channels_last")
        assert torch.equal(got.cpu(), want)


def test_a_full_imagenet_batch():
    core_with_cuda()
    x = pixels((256, 224, 224, 3), seed=3)
    got = finish_images(x.cuda(), dtype=torch.bfloat16)
    assert torch.equal(got.cpu(), finish_images(x, dtype=torch.bfloat16))


def test_empty_batch_on_the_gpu():
    core_with_cuda()
    got = finish_images(torch.empty((0, 4, 4, 3), dtype=torch.uint8, device="cuda"))
    assert got.shape == (0, 3, 4, 4) and got.is_cuda


@pytest.mark.parametrize("np_dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("shift", [True, False])
def test_tokens_equal_the_cpu_path(np_dtype, dtype, shift):
    core_with_cuda()
    if np_dtype == np.uint32 and dtype == torch.int32:
        pytest.skip("refused on every device (test_finish.py checks the error)")
    rng = np.random.default_rng(0)
    top = np.iinfo(np_dtype).max
    rows = rng.integers(0, top, (33, 2049), dtype=np.uint64, endpoint=True).astype(np_dtype)
    rows[0, 0] = rows[-1, -1] = top
    x = torch.from_numpy(rows)
    want = finish_tokens(x, dtype=dtype, shift=shift)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xd = x.cuda()
    got = finish_tokens(xd, dtype=dtype, shift=shift, stream=stream)
    stream.synchronize()
    if shift:
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    else:
        assert torch.equal(got.cpu(), want)


def test_arrays_on_different_devices_are_refused():
    core_with_cuda()
    x = pixels((1, 4, 4, 3))
    with pytest.raises(ValueError, match="same CUDA device"):
        _core.finish_images(x.cuda(), torch.empty((1, 3, 4, 4)), "HWC", "CHW", [1.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError, match="out must be on"):
        finish_images(x.cuda(), out=torch.empty((1, 3, 4, 4)))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_tensor_on_the_second_gpu():
    core_with_cuda()
    x = pixels((2, 8, 8, 3))
    got = finish_images(x.to("cuda:1"), dtype=torch.float16)
    assert got.device == torch.device("cuda:1")
    assert torch.equal(got.cpu(), finish_images(x, dtype=torch.float16))
