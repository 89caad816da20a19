"""decode_crop_into / decode_center_crop_into / decode_batch_into against a plain-Pillow
reference (full decode, crop, resize BILINEAR, flip), for every backend available here."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fastload.decode import (
    DecodeError,
    ImageRng,
    available_jpeg_backends,
    available_resize_backends,
    center_crop_params,
    dct_scale,
    decode_batch_into,
    decode_center_crop_into,
    decode_crop_into,
    draw_batch_params,
    eval_resize_size,
    image_rngs,
)

JPEG_BACKENDS = available_jpeg_backends()
RESIZE_BACKENDS = available_resize_backends()


# ------------------------------------------------------------------------ test images


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Photo-like RGB pixels: a smooth colour field, a few shapes, mild noise."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
    a = np.asarray(field.resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
    for _ in range(4):
        y, x = rng.integers(0, h), rng.integers(0, w)
        a[y : y + h // 4, x : x + w // 5] = rng.integers(0, 256, 3)
    a += rng.integers(-6, 7, a.shape, dtype=np.int16)
    return np.clip(a, 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    f = io.BytesIO()
    im.save(f, fmt, **kw)
    return f.getvalue()


@pytest.fixture(scope="module")
def jpeg_rgb():
    return encode(Image.fromarray(photo(300, 420)), "JPEG", quality=90)


@pytest.fixture(scope="module")
def jpeg_big():
    """Large enough for 1/2 and 1/4 DCT-scaled decodes of crops into a 64x64 output."""
    return encode(Image.fromarray(photo(600, 800, 1)), "JPEG", quality=90)


def reference(data: bytes, crop, flip: bool, size) -> np.ndarray:
    """torchvision-style on PIL: full decode, convert RGB, crop, resize BILINEAR, flip."""
    top, left, h, w = crop
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im = im.crop((left, top, left + w, top + h)).resize(
        (size[1], size[0]), Image.Resampling.BILINEAR
    )
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(im)


def diff(a: np.ndarray, b: np.ndarray):
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), int(d.max())


def decode(data, crop, flip=False, size=(64, 64), layout="HWC", **kw) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    shape = (size[0], size[1], 3) if layout == "HWC" else (3, size[0], size[1])
    out = np.zeros(shape, np.uint8)
    decode_crop_into(data, out, crop, flip, width=im.width, height=im.height, layout=layout, **kw)
    return out


# ------------------------------------------------------------------------ JPEG paths


@pytest.mark.parametrize("jpeg_backend", JPEG_BACKENDS)
@pytest.mark.parametrize("resize_backend", RESIZE_BACKENDS)
@pytest.mark.parametrize(
    "crop",
    [(0, 0, 300, 420), (17, 33, 101, 77), (250, 400, 50, 20), (0, 0, 1, 1), (299, 419, 1, 1)],
)
def test_jpeg_unscaled_matches_pil(jpeg_rgb, jpeg_backend, resize_backend, crop):
    assert dct_scale(crop[2], crop[3], 160, 160) == 1
    got = decode(
        jpeg_rgb, crop, size=(160, 160), jpeg_backend=jpeg_backend, resize_backend=resize_backend
    )
    mean, worst = diff(got, reference(jpeg_rgb, crop, False, (160, 160)))
    # torch's antialiased bilinear matches Pillow's within rounding.
    assert mean < 0.6 and worst <= 4, (mean, worst)


@pytest.mark.parametrize("jpeg_backend", JPEG_BACKENDS)
@pytest.mark.parametrize(
    "crop, scale",
    [
        ((0, 0, 600, 800), 8),
        ((40, 64, 300, 260), 4),
        ((101, 203, 333, 222), 2),
        ((3, 5, 150, 140), 2),
    ],
)
def test_jpeg_dct_scaled_is_close_to_full_decode(jpeg_big, jpeg_backend, crop, scale):
    assert dct_scale(crop[2], crop[3], 64, 64) == scale
    got = decode(jpeg_big, crop, jpeg_backend=jpeg_backend)
    mean, _ = diff(got, reference(jpeg_big, crop, False, (64, 64)))
    assert mean < 3.0, mean


@pytest.mark.parametrize("jpeg_backend", JPEG_BACKENDS)
def test_jpeg_backends_agree(jpeg_big, jpeg_backend):
    crops = [(0, 0, 600, 800), (101, 203, 333, 222), (10, 20, 90, 90), (500, 700, 100, 100)]
    for crop in crops:
        a = decode(jpeg_big, crop, jpeg_backend=jpeg_backend)
        b = decode(jpeg_big, crop, jpeg_backend="pillow-draft")
        assert diff(a, b)[0] < 0.5


def test_partial_rows_decode_gives_the_same_pixels(jpeg_big):
    # A crop at the top only needs the top rows decoded (pillow backend stops there).
    for crop in [(0, 0, 64, 64), (0, 100, 200, 300), (5, 5, 130, 130)]:
        a = decode(jpeg_big, crop, jpeg_backend="pillow")
        b = decode(jpeg_big, crop, jpeg_backend="pillow-draft")
        assert np.array_equal(a, b)


def test_progressive_and_subsampled_jpegs():
    px = photo(200, 260, 3)
    for kw in (
        {"progressive": True},
        {"subsampling": 0},
        {"subsampling": 1},
        {"subsampling": 2, "optimize": True},
    ):
        data = encode(Image.fromarray(px), "JPEG", quality=85, **kw)
        for backend in JPEG_BACKENDS:
            for crop in [(0, 0, 200, 260), (10, 20, 50, 60), (150, 200, 50, 60)]:
                got = decode(data, crop, size=(40, 48), jpeg_backend=backend)
                limit = 3.0 if dct_scale(crop[2], crop[3], 40, 48) > 1 else 0.6
                assert diff(got, reference(data, crop, False, (40, 48)))[0] < limit


@pytest.mark.parametrize("mode", ["L", "CMYK"])
@pytest.mark.parametrize("jpeg_backend", JPEG_BACKENDS)
def test_gray_and_cmyk_jpegs_become_rgb(mode, jpeg_backend):
    im = Image.fromarray(photo(120, 160, 4)).convert(mode)
    data = encode(im, "JPEG", quality=90)
    for crop in [(0, 0, 120, 160), (30, 40, 50, 60)]:
        got = decode(data, crop, size=(32, 32), jpeg_backend=jpeg_backend)
        assert diff(got, reference(data, crop, False, (32, 32)))[0] < 0.6
    if mode == "L":
        assert np.abs(got[..., 0].astype(int) - got[..., 2]).max() <= 1


# ----------------------------------------------------------------------- PNG and WebP


def png_variants():
    px = photo(90, 130, 5)
    rgba = np.dstack([px, np.linspace(0, 255, 90 * 130).reshape(90, 130).astype(np.uint8)])
    gray16 = px[..., 0].astype(np.uint16) * 257
    return {
        "rgb": encode(Image.fromarray(px), "PNG"),
        "gray": encode(Image.fromarray(px).convert("L"), "PNG"),
        "palette": encode(Image.fromarray(px).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "palette-transparent": encode(Image.fromarray(px).convert("P"), "PNG", transparency=0),
        "rgba": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "gray-alpha": encode(Image.fromarray(rgba, "RGBA").convert("LA"), "PNG"),
        "gray16": encode(Image.fromarray(gray16), "PNG"),
        "webp-lossy": encode(Image.fromarray(px), "WEBP", quality=90),
        "webp-lossless": encode(Image.fromarray(px), "WEBP", lossless=True),
        "webp-alpha": encode(Image.fromarray(rgba, "RGBA"), "WEBP", quality=90),
    }


@pytest.mark.parametrize("kind", list(png_variants()))
@pytest.mark.parametrize("resize_backend", RESIZE_BACKENDS)
def test_png_and_webp_match_pil(kind, resize_backend):
    data = png_variants()[kind]
    for crop, flip in [((0, 0, 90, 130), False), ((11, 7, 40, 77), True)]:
        got = decode(data, crop, flip, size=(24, 30), resize_backend=resize_backend)
        if kind == "gray16":  # Pillow's own I;16 -> RGB clips; fastload scales 16 -> 8 bits
            im = Image.open(io.BytesIO(data))
            ref8 = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8)).convert("RGB")
            ref = reference(encode(ref8, "PNG"), crop, flip, (24, 30))
        else:
            ref = reference(data, crop, flip, (24, 30))
        mean, worst = diff(got, ref)
        assert mean < 0.6 and worst <= 4, (kind, mean, worst)


# --------------------------------------------------------------- flip, layout, in place


@pytest.mark.parametrize("resize_backend", RESIZE_BACKENDS)
@pytest.mark.parametrize("jpeg_backend", JPEG_BACKENDS)
def test_flip_mirrors_the_output(jpeg_rgb, jpeg_big, jpeg_backend, resize_backend):
    for data, crop in [(jpeg_rgb, (17, 33, 101, 77)), (jpeg_big, (101, 203, 333, 222))]:
        kw = dict(jpeg_backend=jpeg_backend, resize_backend=resize_backend)
        a = decode(data, crop, False, **kw)
        b = decode(data, crop, True, **kw)
        assert diff(b, a[:, ::-1])[1] <= 1


@pytest.mark.parametrize("resize_backend", RESIZE_BACKENDS)
def test_chw_is_hwc_transposed(jpeg_rgb, jpeg_big, resize_backend):
    for data, crop, flip in [
        (jpeg_rgb, (17, 33, 101, 77), True),
        (jpeg_big, (1, 3, 333, 222), False),
    ]:
        hwc = decode(data, crop, flip, size=(48, 40), resize_backend=resize_backend)
        chw = decode(data, crop, flip, size=(48, 40), layout="CHW", resize_backend=resize_backend)
        assert chw.shape == (3, 48, 40)
        assert np.array_equal(chw, hwc.transpose(2, 0, 1))


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("resize_backend", RESIZE_BACKENDS)
def test_writes_only_into_out(jpeg_rgb, jpeg_big, layout, resize_backend):
    png = png_variants()["rgba"]
    for data, crop in [
        (jpeg_rgb, (17, 33, 101, 77)),
        (jpeg_big, (101, 203, 333, 222)),
        (png, (0, 0, 90, 130)),
    ]:
        w, h = Image.open(io.BytesIO(data)).size
        big = (
            np.full((40, 44, 5), 77, np.uint8)
            if layout == "HWC"
            else np.full((5, 40, 44), 77, np.uint8)
        )
        out = big[4:36, 5:37, 1:4] if layout == "HWC" else big[1:4, 4:36, 5:37]
        assert not out.flags.c_contiguous
        decode_crop_into(
            data, out, crop, True, width=w, height=h, layout=layout, resize_backend=resize_backend
        )
        mask = np.ones(big.shape, bool)
        if layout == "HWC":
            mask[4:36, 5:37, 1:4] = False
        else:
            mask[1:4, 4:36, 5:37] = False
        assert np.all(big[mask] == 77), "wrote outside out"
        assert not np.all(out == 77)
        hwc = out if layout == "HWC" else out.transpose(1, 2, 0)
        assert diff(hwc, reference(data, crop, True, (32, 32)))[0] < 3.0


def test_batch_writes_only_its_rows(jpeg_rgb):
    buf = np.full((6, 32, 32, 3), 9, np.uint8)
    decode_batch_into([jpeg_rgb] * 4, [300] * 4, [420] * 4, buf[1:5], train=True, seed=0)
    assert np.all(buf[0] == 9) and np.all(buf[5] == 9)
    assert not np.all(buf[1:5] == 9)


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_batch_is_deterministic_and_matches_single_decodes(jpeg_rgb, jpeg_big, layout):
    images = [jpeg_rgb, jpeg_big, memoryview(jpeg_rgb), png_variants()["palette"], jpeg_big]
    hs, ws = [300, 600, 300, 90, 600], [420, 800, 420, 130, 800]
    shape = (5, 40, 40, 3) if layout == "HWC" else (5, 3, 40, 40)
    a, b, c = (np.zeros(shape, np.uint8) for _ in range(3))
    decode_batch_into(images, hs, ws, a, train=True, seed=11, layout=layout)
    decode_batch_into(images, hs, ws, b, train=True, rng=np.random.default_rng(11), layout=layout)
    decode_batch_into(images, hs, ws, c, train=True, seed=11, layout=layout, num_threads=2)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    params = draw_batch_params(hs, ws, (40, 40), train=True, rng=np.random.default_rng(11))
    for i, (crop, flip) in enumerate(params):
        one = np.zeros(shape[1:], np.uint8)
        decode_crop_into(images[i], one, crop, flip, width=ws[i], height=hs[i], layout=layout)
        assert np.array_equal(one, a[i])
    d = np.zeros(shape, np.uint8)
    decode_batch_into(images, hs, ws, d, train=True, seed=12, layout=layout)
    assert not np.array_equal(a, d)


def test_params_per_image_generators_and_explicit(jpeg_rgb, jpeg_big):
    """rngs=: each image's crop and flip from its own generator, so any slice of a batch
    drawn on its own (image_rngs with its positions) gets the same; params= decodes exactly
    those."""
    images = [jpeg_rgb, jpeg_big, jpeg_rgb, jpeg_big, jpeg_rgb]
    hs, ws = [300, 600, 300, 600, 300], [420, 800, 420, 800, 420]
    whole = draw_batch_params(hs, ws, (24, 24), train=True, rngs=image_rngs((4, 9), range(5)))
    part = draw_batch_params(
        hs[2:4], ws[2:4], (24, 24), train=True, rngs=image_rngs((4, 9), range(2, 4))
    )
    assert part == whole[2:4]
    assert whole != draw_batch_params(
        hs, ws, (24, 24), train=True, rngs=image_rngs((4, 10), range(5))
    )
    out = np.zeros((5, 24, 24, 3), np.uint8)
    decode_batch_into(images, hs, ws, out, train=True, params=whole)
    for i, (crop, flip) in enumerate(whole):
        one = np.zeros((24, 24, 3), np.uint8)
        decode_crop_into(images[i], one, crop, flip, width=ws[i], height=hs[i])
        assert np.array_equal(one, out[i])
    with pytest.raises(ValueError, match="params"):
        decode_batch_into(images, hs, ws, out, train=True, params=whole[:4])
    with pytest.raises(ValueError, match="generators"):
        draw_batch_params(hs, ws, (24, 24), train=True, rngs=image_rngs((1,), range(4)))


def test_batch_scale_and_ratio(jpeg_rgb, jpeg_big):
    """decode_batch_into(scale=, ratio=) decodes the crops draw_batch_params draws with them;
    encoded_batch draws the same boxes for DALI and nvImageCodec."""
    from types import SimpleNamespace

    from fastload.decode.encoded import encoded_batch
    from fastload.format.imageinfo import EncodedImage

    images = [jpeg_rgb, jpeg_big, jpeg_rgb]
    hs, ws = [300, 600, 300], [420, 800, 420]
    kw = {"scale": (0.3, 0.4), "ratio": (0.5, 0.6)}
    out = np.zeros((3, 20, 20, 3), np.uint8)
    decode_batch_into(images, hs, ws, out, train=True, seed=3, **kw)
    params = draw_batch_params(hs, ws, (20, 20), train=True, rng=np.random.default_rng(3), **kw)
    for crop, _ in params:
        assert 0.5 * 0.97 <= crop.width / crop.height <= 0.6 * 1.03
    want = np.zeros_like(out)
    decode_batch_into(images, hs, ws, want, train=True, params=params)
    assert np.array_equal(out, want)
    default = np.zeros_like(out)
    decode_batch_into(images, hs, ws, default, train=True, seed=3)
    assert not np.array_equal(out, default)
    with pytest.raises(ValueError, match="ratio"):
        decode_batch_into(images, hs, ws, out, train=True, seed=3, ratio=(2.0, 1.0))

    encoded = [EncodedImage(d, "jpeg", h, w) for d, h, w in zip(images, hs, ws, strict=True)]
    spec = SimpleNamespace(hw=(20, 20), train=True)
    batch = encoded_batch(encoded, spec, (7, 1), range(3), np.arange(3), **kw)
    drawn = draw_batch_params(hs, ws, (20, 20), train=True, rngs=image_rngs((7, 1), range(3)), **kw)
    for i, (crop, flip) in enumerate(drawn):
        assert tuple(batch.anchors[i]) == (crop.left, crop.top)
        assert tuple(batch.shapes[i]) == (crop.width, crop.height)
        assert bool(batch.flips[i]) == flip


def test_image_rng_is_keyed_by_its_words():
    a, b = ImageRng([7, 2**64 + 3, 5]), ImageRng([7, 3, 5])  # words are taken modulo 2**64
    assert [a.random() for _ in range(4)] == [b.random() for _ in range(4)]
    draws = {tuple(ImageRng(w).random() for _ in range(3)) for w in ([1], [1, 0], [0, 1], [2])}
    assert len(draws) == 4  # another list of words, another stream
    r = ImageRng([9])
    ints = [r.integers(3, 6) for _ in range(200)]
    assert set(ints) == {3, 4, 5}
    assert all(2.0 <= r.uniform(2.0, 2.5) < 2.5 for _ in range(100))


def test_eval_matches_pil_resize_then_center_crop(jpeg_rgb, jpeg_big):
    for data in (jpeg_rgb, jpeg_big, png_variants()["rgb"]):
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        nh, nw = eval_resize_size(h, w, 64)
        ref = im.convert("RGB").resize((nw, nh), Image.Resampling.BILINEAR)
        top, left = int(round((nh - 64) / 2.0)), int(round((nw - 64) / 2.0))
        ref = np.asarray(ref.crop((left, top, left + 64, top + 64)))
        for resize_backend in RESIZE_BACKENDS:
            out = np.zeros((64, 64, 3), np.uint8)
            decode_center_crop_into(data, out, width=w, height=h, resize_backend=resize_backend)
            mean, worst = diff(out, ref)
            limit = 3.0 if dct_scale(h, w, nh, nw) > 1 else 0.6
            assert mean < limit, (mean, worst)
        batch = np.zeros((2, 3, 64, 64), np.uint8)
        decode_batch_into([data, data], [h, h], [w, w], batch, train=False, layout="CHW")
        single = np.zeros((64, 64, 3), np.uint8)
        decode_center_crop_into(data, single, width=w, height=h)
        assert np.array_equal(batch[1], single.transpose(2, 0, 1))
        # The fractional eval box through decode_crop_into (Pillow box resize) is close too.
        box_out = np.zeros((64, 64, 3), np.uint8)
        decode_crop_into(data, box_out, center_crop_params(h, w, 64), False, width=w, height=h)
        assert diff(box_out, ref)[0] < 3.0


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("jpeg_backend", JPEG_BACKENDS)
def test_corrupt_and_truncated_images_raise_decode_error_with_index(jpeg_rgb, jpeg_backend):
    png = png_variants()["rgb"]
    bad = {
        "truncated jpeg": jpeg_rgb[: len(jpeg_rgb) // 2],
        "header only": jpeg_rgb[:200],
        "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
        "jpeg magic then junk": b"\xff\xd8\xff" + b"junk" * 100,
        "truncated png": png[: len(png) // 2],
        "empty": b"",
    }
    for name, data in bad.items():
        out = np.zeros((3, 16, 16, 3), np.uint8)
        with pytest.raises(DecodeError) as info:
            decode_batch_into(
                [jpeg_rgb, jpeg_rgb, data],
                [300] * 3,
                [420] * 3,
                out,
                train=True,
                seed=0,
                jpeg_backend=jpeg_backend,
            )
        assert info.value.index == 2, name
        assert "image 2" in str(info.value)
        assert isinstance(info.value, ValueError)
        # The crop reaching the bottom rows needs the missing data.
        with pytest.raises(DecodeError) as info:
            decode_crop_into(
                data,
                out[0],
                (0, 0, 300, 420),
                False,
                width=420,
                height=300,
                jpeg_backend=jpeg_backend,
            )
        assert info.value.index is None


def test_lowest_failing_index_is_raised_from_threads(jpeg_rgb):
    images = [jpeg_rgb, b"bad", jpeg_rgb, jpeg_rgb, b"bad", jpeg_rgb]
    out = np.zeros((6, 16, 16, 3), np.uint8)
    with pytest.raises(DecodeError) as info:
        decode_batch_into(images, [300] * 6, [420] * 6, out, train=True, seed=0, num_threads=2)
    assert info.value.index == 1


def test_size_mismatch_is_a_decode_error(jpeg_rgb):
    out = np.zeros((16, 16, 3), np.uint8)
    for backend in JPEG_BACKENDS:
        with pytest.raises(DecodeError, match="420x300"):
            decode_crop_into(
                jpeg_rgb, out, (0, 0, 10, 10), False, width=421, height=300, jpeg_backend=backend
            )


def test_bad_out_and_crop_raise_value_error(jpeg_rgb):
    kw = dict(width=420, height=300)
    crop = (0, 0, 100, 100)
    for out in [
        np.zeros((0, 16, 3), np.uint8),
        np.zeros((16, 0, 3), np.uint8),
        np.zeros((16, 16, 3), np.float32),
        np.zeros((16, 16, 4), np.uint8),
        np.zeros((16, 16), np.uint8),
        [[0]],
    ]:
        with pytest.raises(ValueError) as info:
            decode_crop_into(jpeg_rgb, out, crop, False, **kw)
        assert not isinstance(info.value, DecodeError)
    ro = np.zeros((16, 16, 3), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        decode_crop_into(jpeg_rgb, ro, crop, False, **kw)
    with pytest.raises(ValueError):
        decode_crop_into(jpeg_rgb, np.zeros((16, 16, 3), np.uint8), crop, False, **kw, layout="CHW")
    for bad_crop in [(0, 0, 0, 10), (250, 0, 100, 10), (-1, 0, 10, 10), (0, 0, 10)]:
        with pytest.raises(ValueError):
            decode_crop_into(jpeg_rgb, np.zeros((16, 16, 3), np.uint8), bad_crop, False, **kw)
    with pytest.raises(ValueError):  # batch of 2 into room for 3
        decode_batch_into(
            [jpeg_rgb] * 2,
            [300] * 2,
            [420] * 2,
            np.zeros((3, 8, 8, 3), np.uint8),
            train=True,
            seed=0,
        )
    with pytest.raises(ValueError):
        decode_batch_into(
            [jpeg_rgb],
            [300],
            [420],
            np.zeros((1, 8, 8, 3), np.uint8),
            train=True,
            seed=0,
            layout="NHWC",
        )
    with pytest.raises(ValueError):
        decode_crop_into(
            jpeg_rgb, np.zeros((8, 8, 3), np.uint8), crop, False, **kw, jpeg_backend="nope"
        )


def test_warm_up_image_decodes_with_every_backend():
    """The loader's warm-up decodes a JPEG kept in the source (Pillow's encoder and its
    plugin imports are not paid for at start): it must stay a 64x48 RGB JPEG that every
    backend decodes alike."""
    from fastload.decode.batch import _WARM_JPEG, warm_up

    with Image.open(io.BytesIO(_WARM_JPEG)) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 48))
        want = np.asarray(im.convert("RGB"))
    for backend in JPEG_BACKENDS:
        out = np.zeros((1, 48, 64, 3), np.uint8)
        params = [((0.0, 0.0, 48.0, 64.0), False)]
        decode_batch_into(
            [_WARM_JPEG], [48], [64], out, train=True, params=params, jpeg_backend=backend
        )
        np.testing.assert_array_equal(out[0], want)
    warm_up()  # never raises
