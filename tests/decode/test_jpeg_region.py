"""The JPEG region decoder (``_core.decode_jpeg_region``, backend ``libjpeg-region``): the
pixels of a rectangle are a whole-image decode's, bit for bit, for every chroma layout, for
progressive and grayscale JPEGs and at every DCT scale; crops through it equal those of a
whole-image backend exactly; what it does not handle goes to the whole-image path."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fastload import _core
from fastload.decode import DecodeError, dct_scale, decode_crop_into

from .test_decode import encode, photo

pytestmark = pytest.mark.skipif(
    not _core.jpeg_region_available(),
    reason="fastload._core was built without libjpeg-turbo (FASTLOAD_JPEG=OFF, or not found)",
)

H, W = 237, 341  # not multiples of 8 or 16: partial blocks at the right and bottom

LAYOUTS = {
    "4:4:4": dict(subsampling=0),
    "4:2:2": dict(subsampling=1),
    "4:2:0": dict(subsampling=2),
    "progressive 4:2:0": dict(subsampling=2, progressive=True),
}


def whole(data: bytes, scale: int) -> np.ndarray:
    """Pillow's own decode of the whole image at 1/scale (its bundled libjpeg-turbo)."""
    with Image.open(io.BytesIO(data)) as im:
        if scale > 1:
            im.draft("RGB", (im.width // scale, im.height // scale))  # at least this size
        return np.asarray(im.convert("RGB"))


def region(data: bytes, scale: int, top: int, left: int, bottom: int, right: int):
    out = np.zeros(-(-H // scale) * -(-W // scale) * 3, np.uint8)
    status, message, h, w, row0, col0, rows, cols, indexed = _core.decode_jpeg_region(
        data, scale, H, W, top, left, bottom, right, out
    )
    assert not indexed  # no index given
    assert (h, w) == (H, W)
    return status, message, row0, col0, out[: rows * cols * 3].reshape(rows, cols, 3)


def random_boxes(rng, rows: int, cols: int, count: int):
    for _ in range(count):
        top, left = int(rng.integers(0, rows - 1)), int(rng.integers(0, cols - 1))
        yield top, left, int(rng.integers(top + 1, rows + 1)), int(rng.integers(left + 1, cols + 1))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_region_pixels_are_the_whole_decodes(layout, scale):
    data = encode(Image.fromarray(photo(H, W, 5)), "JPEG", quality=88, **LAYOUTS[layout])
    ref = whole(data, scale)
    rows, cols = ref.shape[:2]
    boxes = [(0, 0, rows, cols), (0, 0, 1, 1), (rows - 1, cols - 1, rows, cols)]
    boxes += list(random_boxes(np.random.default_rng(scale), rows, cols, 40))
    for top, left, bottom, right in boxes:
        # one more pixel on each side than is compared: chroma upsampling at the edge
        status, message, row0, col0, px = region(
            data, scale, top - 1, left - 1, bottom + 1, right + 1
        )
        assert status == 0, message
        assert row0 == max(0, top - 1) and col0 <= max(0, left - 1)
        assert row0 + px.shape[0] == min(rows, bottom + 1)
        assert col0 + px.shape[1] >= min(cols, right + 1)
        assert np.array_equal(
            px[top - row0 : bottom - row0, left - col0 : right - col0], ref[top:bottom, left:right]
        ), (layout, scale, (top, left, bottom, right))


def test_grayscale_jpeg_comes_out_rgb():
    gray = Image.fromarray(photo(H, W, 6)).convert("L")
    data = encode(gray, "JPEG", quality=90)
    status, message, row0, col0, px = region(data, 1, 9, 17, 120, 200)
    assert status == 0, message
    ref = np.asarray(Image.open(io.BytesIO(data)))
    got = px[10 - row0 : 119 - row0, 18 - col0 : 199 - col0]
    assert np.array_equal(got[..., 0], ref[10:119, 18:199])
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 0], got[..., 2])


def test_what_the_region_path_does_not_take_is_said():
    rgb = Image.fromarray(photo(H, W, 7))
    data = encode(rgb, "JPEG", quality=85)
    out = np.zeros(H * W * 3, np.uint8)

    def call(payload, **kw):
        args = dict(scale=1, expect_height=H, expect_width=W, top=0, left=0, bottom=H, right=W)
        args.update(kw)
        args.setdefault("out", out)
        return _core.decode_jpeg_region(payload, **args)

    cmyk = encode(rgb.convert("CMYK"), "JPEG", quality=85)
    assert call(cmyk)[0] == 1  # not handled: another path converts CMYK
    assert call(data[: len(data) // 2])[0] == 1  # truncated: libjpeg warned
    assert call(data, expect_height=H + 1)[:4] == (2, "", H, W)  # size mismatch
    status, message = call(b"\xff\xd8\xff" + b"junk" * 50)[:2]
    assert status == 3 and message  # refused, with libjpeg's reason
    assert call(data, scale=3)[:2] == (3, "scale must be 1, 2, 4 or 8")
    assert call(data, top=H, bottom=H + 5)[0] == 3  # empty once clamped to the image
    assert call(data, out=np.zeros(100, np.uint8))[:2] == (
        3,
        "the output buffer is too small for the region",
    )
    with pytest.raises(TypeError):
        call(data, out=bytes(100))  # read-only


def test_top_rows_of_a_truncated_jpeg_decode_as_the_rows_path_does():
    data = encode(Image.fromarray(photo(H, W, 8)), "JPEG", quality=90)
    cut = data[: int(len(data) * 0.7)]
    out = np.zeros((32, 32, 3), np.uint8)
    # The crop's rows come before the cut: nothing is missing for it.
    for backend in ("libjpeg-region", "pillow"):
        decode_crop_into(cut, out, (0, 0, 40, 60), False, width=W, height=H, jpeg_backend=backend)
    # A crop reaching the missing rows is an error, as from every backend.
    with pytest.raises(DecodeError):
        decode_crop_into(
            cut, out, (150, 0, 87, 60), False, width=W, height=H, jpeg_backend="libjpeg-region"
        )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", [160, 24])
def test_crops_equal_a_whole_image_backends(layout, size):
    """Unscaled crops (whole-pixel boxes) are the same bytes. A DCT-scaled crop's box falls
    between pixels and goes through Pillow's resize(box=...), which rounds one level apart on
    some pixels for the same box of the same pixels in a narrower array (measured: a box in
    the first 25 columns of a 60x86 array, cut to 40 columns or fewer), so there the crops
    agree within one level; the decoded pixels under them are the same bytes (above)."""
    data = encode(Image.fromarray(photo(H, W, 9)), "JPEG", quality=90, **LAYOUTS[layout])
    rng = np.random.default_rng(size)
    for _ in range(30):
        h, w = int(rng.integers(8, H + 1)), int(rng.integers(8, W + 1))
        top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        flip = bool(rng.integers(0, 2))
        got, want = np.zeros((2, size, size, 3), np.uint8)
        kw = dict(width=W, height=H)
        decode_crop_into(data, got, (top, left, h, w), flip, jpeg_backend="libjpeg-region", **kw)
        decode_crop_into(data, want, (top, left, h, w), flip, jpeg_backend="pillow-draft", **kw)
        if dct_scale(h, w, size, size) == 1:
            assert np.array_equal(got, want), (layout, (top, left, h, w))
        else:
            gap = np.abs(got.astype(np.int16) - want)
            assert gap.max() <= 1, (layout, (top, left, h, w))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_crops_with_edges_on_block_boundaries_equal_a_whole_image_backends(layout):
    """A whole-pixel crop at full scale is decoded with a two-pixel margin only: edges on
    8- and 16-pixel boundaries (where the decoded region's own edge would fall) still give
    the bytes of a whole-image decode."""
    data = encode(Image.fromarray(photo(H, W, 4)), "JPEG", quality=90, **LAYOUTS[layout])
    boxes = [(16, 32, 64, 96), (0, 0, 16, 16), (32, 48, H - 32, W - 48), (8, 8, 200, 320)]
    for top, left, h, w in boxes:
        assert dct_scale(h, w, 160, 160) == 1
        got, want = np.zeros((2, 160, 160, 3), np.uint8)
        kw = dict(width=W, height=H, jpeg_backend="libjpeg-region")
        decode_crop_into(data, got, (top, left, h, w), False, **kw)
        kw["jpeg_backend"] = "pillow-draft"
        decode_crop_into(data, want, (top, left, h, w), False, **kw)
        assert np.array_equal(got, want), (layout, (top, left, h, w))


def test_threads_decode_side_by_side():
    from concurrent.futures import ThreadPoolExecutor

    images = [encode(Image.fromarray(photo(H, W, s)), "JPEG", quality=85) for s in range(8)]
    crops = [(s * 7, s * 11, 120, 150) for s in range(8)]

    def one(k: int) -> np.ndarray:
        out = np.zeros((48, 48, 3), np.uint8)
        decode_crop_into(
            images[k % 8],
            out,
            crops[k % 8],
            False,
            width=W,
            height=H,
            jpeg_backend="libjpeg-region",
        )
        return out

    alone = [one(k) for k in range(8)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(one, range(64)))
    assert len(together) == 64
    for k, out in enumerate(together):
        assert np.array_equal(out, alone[k % 8])
