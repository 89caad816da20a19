"""Batch finishing on the CPU (fastload.decode.finish): images against a numpy reference
(float32 within 1e-5, half types within one ulp and equal to torch's rounding of the same
float32), every layout and dtype, odd sizes, empty batches, bad arguments; tokens with and
without the shift, uint16 and uint32, int32 and int64, values at the type's maximum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fastload import _core
from fastload.decode import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TokenDecode,
    finish_images,
    finish_tokens,
    resolve_normalize,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def images(n: int, h: int, w: int, c: int = 3, layout: str = "HWC", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    x[0, 0, 0] = 0  # both ends of the range
    if x.size > c:
        x.reshape(-1, c)[1] = 255
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "CHW" else x


def as_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if layout == "HWC" else x


def same_op_reference(x: np.ndarray, layout: str, mean, std) -> np.ndarray:
    """The kernels' own float32 steps in numpy: (x - f32(255 m)) / f32(255 s)."""
    m = np.array([np.float32(v * 255.0) for v in mean], np.float32).reshape(1, -1, 1, 1)
    s = np.array([np.float32(v * 255.0) for v in std], np.float32).reshape(1, -1, 1, 1)
    return (as_nchw(x, layout).astype(np.float32) - m) / s


def textbook_reference(x: np.ndarray, layout: str, mean, std) -> np.ndarray:
    """(x / 255 - mean) / std in float64: what the user asked for."""
    m = np.asarray(mean, np.float64).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float64).reshape(1, -1, 1, 1)
    return (as_nchw(x, layout).astype(np.float64) / 255.0 - m) / s


def ulp(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The spacing of ``dtype``'s values around each of ``values``."""
    mantissa_bits, min_exp = {torch.float16: (10, -14), torch.bfloat16: (7, -126)}[dtype]
    exp = np.floor(np.log2(np.maximum(np.abs(values), 2.0**min_exp)))
    return 2.0 ** (exp - mantissa_bits)


@pytest.mark.parametrize(
    "dtype, layout_in, layout_out",
    list(itertools.product(DTYPES, ["HWC", "CHW"], ["CHW", "channels_last"])),
)
def test_images_match_the_reference_in_every_layout_and_dtype(dtype, layout_in, layout_out):
    x = images(3, 5, 7, layout=layout_in)
    got = finish_images(
        torch.from_numpy(x), dtype=dtype, layout_in=layout_in, layout_out=layout_out
    )
    assert got.shape == (3, 3, 5, 7) and got.dtype == dtype
    fmt = torch.channels_last if layout_out == "channels_last" else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt)
    same = same_op_reference(x, layout_in, IMAGENET_MEAN, IMAGENET_STD)
    textbook = textbook_reference(x, layout_in, IMAGENET_MEAN, IMAGENET_STD)
    if dtype == torch.float32:
        assert np.array_equal(got.numpy(), same)
        assert np.abs(got.numpy() - textbook).max() <= 1e-5
    else:
        # torch's rounding of the same float32 values, bit for bit ...
        assert torch.equal(got, torch.from_numpy(same).to(dtype))
        # ... and within one ulp of the exact value (round to nearest: half an ulp, plus the
        # float32 steps before it).
        err = np.abs(got.float().numpy().astype(np.float64) - textbook)
        assert (err <= ulp(textbook, dtype)).all()


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_images_with_other_channel_counts(channels):
    mean = tuple(np.linspace(0.1, 0.9, channels))
    std = tuple(np.linspace(0.2, 0.6, channels))
    x = images(2, 9, 4, c=channels)
    for dtype in DTYPES:
        got = finish_images(x, mean=mean, std=std, dtype=dtype)
        assert got.shape == (2, channels, 9, 4)
        assert torch.equal(got, torch.from_numpy(same_op_reference(x, "HWC", mean, std)).to(dtype))


def test_images_match_the_torch_ops_users_write():
    x = torch.from_numpy(images(4, 17, 13))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    want = x.permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
    got = finish_images(x)
    assert (got - want).abs().max().item() <= 1e-5


def test_every_pixel_value_in_every_channel():
    # All 256 values in each channel: the CPU path's lookup table is checked entry by entry.
    x = np.stack([np.arange(256, dtype=np.uint8)] * 3, axis=-1).reshape(1, 16, 16, 3)
    for dtype in DTYPES:
        got = finish_images(x, dtype=dtype)
        want = same_op_reference(x, "HWC", IMAGENET_MEAN, IMAGENET_STD)
        assert torch.equal(got, torch.from_numpy(want).to(dtype))


def test_images_into_a_given_out():
    x = images(2, 6, 5)
    out = torch.full((2, 3, 6, 5), 7.0, dtype=torch.bfloat16)
    assert finish_images(x, dtype=torch.bfloat16, out=out) is out
    assert torch.equal(out, finish_images(x, dtype=torch.bfloat16))
    cl = torch.empty((2, 3, 6, 5)).to(memory_format=torch.channels_last)
    assert finish_images(x, layout_out="channels_last", out=cl) is cl
    assert torch.equal(cl, finish_images(x))


def test_images_from_a_read_only_array():
    x = images(1, 4, 4)
    x.flags.writeable = False
    assert torch.equal(finish_images(x), finish_images(x.copy()))


def test_empty_batch():
    for layout_in in ("HWC", "CHW"):
        shape = (0, 8, 9, 3) if layout_in == "HWC" else (0, 3, 8, 9)
        got = finish_images(torch.empty(shape, dtype=torch.uint8), layout_in=layout_in)
        assert got.shape == (0, 3, 8, 9) and got.dtype == torch.float32


def test_threads_give_the_same_bytes():
    x = images(6, 224, 224)  # over 2**18 elements: split in parts
    for dtype in DTYPES:
        one = finish_images(x, dtype=dtype, num_threads=1)
        for threads in (2, 3, 64):
            assert torch.equal(finish_images(x, dtype=dtype, num_threads=threads), one)


def test_normalize_none_and_custom_values():
    x = images(1, 3, 3)
    plain = finish_images(x, mean=(0, 0, 0), std=(1, 1, 1))
    assert np.abs(plain.numpy() - as_nchw(x, "HWC") / 255.0).max() <= 1e-7
    assert plain.min() >= 0 and plain.max() <= 1
    half = finish_images(x, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert half.min() >= -1 and half.max() <= 1


def test_resolve_normalize():
    assert resolve_normalize("imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    assert resolve_normalize(None) == ((0.0,) * 3, (1.0,) * 3)
    assert resolve_normalize(None, channels=1) == ((0.0,), (1.0,))
    assert resolve_normalize(([0.5, 0.4, 0.3], np.array([0.2, 0.2, 0.2]))) == (
        (0.5, 0.4, 0.3),
        (0.2, 0.2, 0.2),
    )
    with pytest.raises(ValueError, match="0..255"):
        resolve_normalize(((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)))
    with pytest.raises(ValueError, match="one value per channel"):
        resolve_normalize(((0.5, 0.5), (0.5, 0.5)))
    for bad in ("cifar", (0.5, 0.5), ((0.5,) * 3,), ((0.5,) * 3, (0.0,) * 3), "", 3):
        with pytest.raises(ValueError):
            resolve_normalize(bad)
    with pytest.raises(ValueError, match="3 channels"):
        resolve_normalize("imagenet", channels=1)


def test_bad_image_arguments_are_clear_errors():
    x = torch.from_numpy(images(2, 4, 5))
    with pytest.raises(TypeError, match="uint8"):
        finish_images(x.float())
    with pytest.raises(TypeError, match="dtype"):
        finish_images(x, dtype=torch.int8)
    with pytest.raises(TypeError, match="numpy"):
        finish_images([[1, 2, 3]])
    with pytest.raises(ValueError, match="N, H, W, C"):
        finish_images(x[0])
    with pytest.raises(ValueError, match="C-contiguous"):
        finish_images(x.transpose(1, 2))
    with pytest.raises(ValueError, match="C-contiguous"):
        finish_images(x[:, :, ::2])
    with pytest.raises(ValueError, match="1 to 4 channels"):
        finish_images(torch.zeros((2, 5, 4, 4), dtype=torch.uint8), layout_in="CHW")
    with pytest.raises(ValueError, match="one value per channel"):
        finish_images(x, mean=(0.5, 0.5), std=(0.5, 0.5))
    with pytest.raises(ValueError, match="0..255"):
        finish_images(x, mean=(124, 116, 104), std=(58, 57, 57))
    with pytest.raises(ValueError, match="std"):
        finish_images(x, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="layout_in"):
        finish_images(x, layout_in="NHWC")
    with pytest.raises(ValueError, match="layout_out"):
        finish_images(x, layout_out="HWC")
    with pytest.raises(ValueError, match="stream"):
        finish_images(x, stream=0)
    with pytest.raises(ValueError, match="shape"):
        finish_images(x, out=torch.empty((2, 3, 5, 4)))
    with pytest.raises(TypeError, match="bfloat16"):
        finish_images(x, dtype=torch.bfloat16, out=torch.empty((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="channels_last"):
        finish_images(x, layout_out="channels_last", out=torch.empty((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="contiguous"):
        finish_images(x, out=torch.empty((2, 3, 4, 5)).to(memory_format=torch.channels_last))


def test_bad_image_arguments_at_the_core():
    """The binding checks what the Python layer would not let through."""
    x = torch.from_numpy(images(2, 4, 5))
    mean, std = [120.0] * 3, [60.0] * 3
    out = torch.zeros((2, 3, 4, 5))
    with pytest.raises(ValueError, match="out must be"):
        _core.finish_images(x, torch.empty((2, 3, 5, 4)), "HWC", "CHW", mean, std)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.finish_images(x, torch.empty((2, 3, 5, 4)).transpose(2, 3), "HWC", "CHW", mean, std)
    with pytest.raises(TypeError, match="out must be float32"):
        _core.finish_images(x, out.double(), "HWC", "CHW", mean, std)
    with pytest.raises(TypeError, match="uint8"):
        _core.finish_images(x.to(torch.int8), out, "HWC", "CHW", mean, std)
    with pytest.raises(ValueError, match="'HWC' or 'CHW'"):
        _core.finish_images(x, out, "HWC", "NCHW", mean, std)
    with pytest.raises(ValueError, match="finite"):
        _core.finish_images(x, out, "HWC", "CHW", [float("nan")] * 3, std)
    with pytest.raises(ValueError, match="one value per channel"):
        _core.finish_images(x, out, "HWC", "CHW", mean, std[:1])
    with pytest.raises(ValueError, match="must be \\(N, H, W, C\\)"):
        _core.finish_images(x[0], out, "HWC", "CHW", mean, std)
    before = out.clone()
    with pytest.raises(ValueError):
        _core.finish_images(x, out, "HWC", "CHW", mean, [60.0, -1.0, 60.0])
    assert torch.equal(out, before)  # nothing written


# ------------------------------------------------------------------------------------ tokens


def token_rows(rows: int, length: int, np_dtype) -> np.ndarray:
    rng = np.random.default_rng(1)
    top = np.iinfo(np_dtype).max
    x = rng.integers(0, top, (rows, length), dtype=np.uint64, endpoint=True).astype(np_dtype)
    x[0, 0] = top  # the type's largest token, as the first input ...
    x[-1, -1] = top  # ... and as the last target
    x[0, 1] = 0
    return x


@pytest.mark.parametrize("np_dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("shift", [True, False])
def test_tokens_against_numpy(np_dtype, dtype, shift):
    x = token_rows(5, 11, np_dtype)
    if np_dtype == np.uint32 and dtype == torch.int32:
        with pytest.raises(TypeError, match="int64"):
            finish_tokens(x, dtype=dtype, shift=shift)
        return
    got = finish_tokens(torch.from_numpy(x), dtype=dtype, shift=shift)
    want = x.astype(np.int64)
    if shift:
        inputs, targets = got
        assert inputs.dtype == targets.dtype == dtype
        assert np.array_equal(inputs.numpy(), want[:, :-1])
        assert np.array_equal(targets.numpy(), want[:, 1:])
        assert targets[-1, -1].item() == np.iinfo(np_dtype).max
    else:
        assert got.dtype == dtype and np.array_equal(got.numpy(), want)
        assert got[0, 0].item() == np.iinfo(np_dtype).max  # widened, not wrapped negative


def test_tokens_from_numpy_into_given_out_and_threads():
    x = token_rows(64, 8193, np.uint16)  # over 2**18 output elements: threads split the rows
    inputs = torch.empty((64, 8192), dtype=torch.int64)
    targets = torch.empty((64, 8192), dtype=torch.int64)
    got = finish_tokens(x, out=(inputs, targets), num_threads=3)
    assert got[0] is inputs and got[1] is targets
    assert np.array_equal(inputs.numpy(), x[:, :-1].astype(np.int64))
    assert np.array_equal(targets.numpy(), x[:, 1:].astype(np.int64))
    plain = torch.empty((64, 8193), dtype=torch.int32)
    assert finish_tokens(x, dtype=torch.int32, shift=False, out=plain) is plain
    assert np.array_equal(plain.numpy(), x.astype(np.int32))


def test_empty_token_batches():
    inputs, targets = finish_tokens(torch.empty((0, 9), dtype=torch.uint16))
    assert inputs.shape == targets.shape == (0, 8)
    assert finish_tokens(torch.empty((3, 0), dtype=torch.uint16), shift=False).shape == (3, 0)


def test_bad_token_arguments_are_clear_errors():
    x = torch.from_numpy(token_rows(3, 6, np.uint16))
    with pytest.raises(TypeError, match="uint16 or uint32"):
        finish_tokens(x.to(torch.int32))
    with pytest.raises(TypeError, match="int64 or int32"):
        finish_tokens(x, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        finish_tokens(x[0])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        finish_tokens(x[:, :1].contiguous())
    with pytest.raises(ValueError, match="C-contiguous"):
        finish_tokens(x[:, ::2])
    with pytest.raises(ValueError, match="pair"):
        finish_tokens(x, out=(torch.empty((3, 5), dtype=torch.int64),))
    with pytest.raises(ValueError, match="shape"):
        finish_tokens(x, shift=False, out=torch.empty((3, 5), dtype=torch.int64))
    with pytest.raises(TypeError, match="shift"):
        finish_tokens(x, shift=1)
    with pytest.raises(ValueError, match="stream"):
        finish_tokens(x, stream=0)
    with pytest.raises(ValueError, match="targets must be"):
        _core.finish_tokens(
            x, torch.empty((3, 5), dtype=torch.int64), x.new_empty((3, 4), dtype=torch.int64)
        )
    with pytest.raises(TypeError, match="targets must have the dtype"):
        _core.finish_tokens(
            x, torch.empty((3, 5), dtype=torch.int64), x.new_empty((3, 5), dtype=torch.int32)
        )
    with pytest.raises(ValueError, match="inputs must be"):
        _core.finish_tokens(
            x, torch.empty((3, 6), dtype=torch.int64), x.new_empty((3, 5), dtype=torch.int64)
        )


def test_token_decode_spec():
    spec = TokenDecode()
    assert spec.dtype == torch.int64 and spec.shift is True
    assert spec.out_length(9) == 8 and TokenDecode(shift=False).out_length(9) == 9
    assert TokenDecode.targets_name("tokens") == "tokens_targets"
    x = token_rows(2, 5, np.uint16)
    inputs, targets = spec.finish(x)
    assert np.array_equal(targets.numpy(), x[:, 1:].astype(np.int64))
    assert TokenDecode(dtype=torch.int32, shift=False).finish(x).dtype == torch.int32
    spec.check_tokens(np.dtype(np.uint32))
    spec.check_tokens(torch.uint16)
    with pytest.raises(ValueError, match="int64"):
        TokenDecode(dtype=torch.int32).check_tokens(np.dtype(np.uint32))
    with pytest.raises(ValueError, match="uint16 or uint32"):
        spec.check_tokens(np.dtype(np.int64))
    with pytest.raises(ValueError):
        TokenDecode(dtype=torch.float32)
    with pytest.raises(ValueError):
        TokenDecode(shift="yes")
    with pytest.raises(ValueError, match="at least 2"):
        spec.out_length(1)
    with pytest.raises(AttributeError):
        spec.shift = False  # frozen
