"""A JPEG's entropy index (``_core.jpeg_entropy_index``): built for baseline JPEGs of every
chroma layout and Huffman table, none for what it is not made for; a region decoded through it
is the region decoded without it, pixel for pixel, at every DCT scale, and it is actually taken
for most training crops; an index that does not fit the bytes is set aside. Through
``decode_batch_into``, crops with and without their indexes are the same bytes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image, ImageFile

from fastload import _core
from fastload.decode import decode_batch_into, draw_batch_params, image_rngs

from .test_decode import encode, photo

pytestmark = pytest.mark.skipif(
    not _core.jpeg_region_available(),
    reason="fastload._core was built without libjpeg-turbo (FASTLOAD_JPEG=OFF, or not found)",
)

H, W = 237, 341  # partial MCUs at the right and bottom

VARIANTS = {
    "4:4:4": dict(subsampling=0, quality=90),
    "4:2:2": dict(subsampling=1, quality=90),
    "4:2:0": dict(subsampling=2, quality=90),
    "4:2:0 optimized tables": dict(subsampling=2, quality=75, optimize=True),
    "4:4:4 quality 100": dict(subsampling=0, quality=100),
    "4:2:0 quality 20": dict(subsampling=2, quality=20),
}


def jpeg(variant: str, seed: int = 3) -> bytes:
    ImageFile.MAXBLOCK = max(ImageFile.MAXBLOCK, 1 << 22)  # Pillow's optimize=True needs room
    return encode(Image.fromarray(photo(H, W, seed)), "JPEG", **VARIANTS[variant])


def decode(data: bytes, scale: int, box, index=None, size=(H, W)):
    out = np.zeros(-(-size[0] // scale) * -(-size[1] // scale) * 3, np.uint8)
    status, message, _, _, row0, col0, rows, cols, indexed = _core.decode_jpeg_region(
        data, scale, size[0], size[1], *box, out, index
    )
    assert status == 0, message
    return (row0, col0, rows, cols), out[: rows * cols * 3].copy(), indexed


def boxes(rng, rows: int, cols: int, count: int):
    for _ in range(count):
        top, left = int(rng.integers(0, rows)), int(rng.integers(0, cols))
        yield top, left, int(rng.integers(top + 1, rows + 1)), int(rng.integers(left + 1, cols + 1))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_a_region_through_the_index_is_the_region_without_it(variant, scale):
    data = jpeg(variant)
    index = _core.jpeg_entropy_index(data)
    assert index is not None and index[:4] == b"FJX1"
    rows, cols = -(-H // scale), -(-W // scale)
    taken = 0
    regions = [(rows - 3, cols - 3, rows, cols), (rows // 2, 2, rows // 2 + 1, 4)]
    regions += list(boxes(np.random.default_rng(scale), rows, cols, 40))
    for box in regions:
        where, pixels, indexed = decode(data, scale, box, index)
        plain_where, plain_pixels, plain_indexed = decode(data, scale, box)
        assert not plain_indexed and plain_where == where, (variant, scale, box)
        assert np.array_equal(plain_pixels, pixels), (variant, scale, box)
        taken += indexed
    assert taken >= len(regions) // 3, taken  # the index is used, not only the plain path


def test_grayscale_is_indexed_and_exact():
    data = encode(Image.fromarray(photo(H, W, 4)).convert("L"), "JPEG", quality=85)
    index = _core.jpeg_entropy_index(data)
    assert index is not None and index[24] == 1  # one component
    for box in [(150, 200, 230, 330), (40, 120, 90, 200)]:
        where, pixels, indexed = decode(data, 1, box, index)
        assert indexed and decode(data, 1, box)[0] == where
        assert np.array_equal(decode(data, 1, box)[1], pixels)


def test_what_the_index_is_not_made_for_gets_none():
    rgb = Image.fromarray(photo(H, W, 5))
    assert _core.jpeg_entropy_index(encode(rgb, "JPEG", progressive=True)) is None
    assert _core.jpeg_entropy_index(encode(rgb.convert("CMYK"), "JPEG")) is None
    assert _core.jpeg_entropy_index(encode(rgb, "PNG")) is None
    data = encode(rgb, "JPEG", quality=90)
    assert _core.jpeg_entropy_index(data[: len(data) * 2 // 3]) is None  # data runs out
    sos = data.index(b"\xff\xda")  # a restart interval, just before the scan
    with_dri = data[:sos] + b"\xff\xdd\x00\x04\x00\x08" + data[sos:]
    assert _core.jpeg_entropy_index(with_dri) is None
    assert _core.jpeg_entropy_index(b"") is None and _core.jpeg_entropy_index(b"\xff\xd8") is None


def test_an_index_that_does_not_fit_is_set_aside():
    a, b = jpeg("4:2:0", seed=6), jpeg("4:2:0", seed=7)  # same size, other bytes
    index_a = _core.jpeg_entropy_index(a)
    box = (150, 200, 230, 330)
    assert decode(a, 1, box, index_a)[2]
    where, pixels, indexed = decode(b, 1, box, index_a)
    assert not indexed and where == decode(b, 1, box)[0]
    assert np.array_equal(pixels, decode(b, 1, box)[1])
    for bad in (index_a[:-1], index_a + b"\0", b"FJX2" + index_a[4:], b"nonsense"):
        assert not decode(a, 1, box, bad)[2]
    # another image's size: the plain path reports the mismatch
    out = np.zeros(H * W * 3, np.uint8)
    assert _core.decode_jpeg_region(a, 1, H + 1, W, *box, out, index_a)[0] == 2


def test_the_index_of_a_640x480_photo_is_3_kb():
    data = encode(Image.fromarray(photo(480, 640, 8)), "JPEG", quality=90)
    index = _core.jpeg_entropy_index(data)
    rows, cols, step = struct.unpack_from("<HH", index, 20) + (index[25],)
    assert (rows, cols, step) == (30, 40, 4)  # 4:2:0 MCUs of 16 x 16, every 4th indexed
    assert len(index) == 32 + rows * (cols // step) * (4 + 2 * 3) == 3032


def test_batches_decode_the_same_with_their_indexes():
    images = [jpeg(v, seed=10 + k) for k, v in enumerate(VARIANTS)] * 3
    n = len(images)
    indexes = [_core.jpeg_entropy_index(d) for d in images]
    params = draw_batch_params(
        [H] * n, [W] * n, (64, 64), train=True, rngs=image_rngs([5], range(n))
    )
    plain, indexed = np.zeros((2, n, 64, 64, 3), np.uint8)
    decode_batch_into(images, [H] * n, [W] * n, plain, train=True, params=params)
    decode_batch_into(images, [H] * n, [W] * n, indexed, train=True, params=params, indexes=indexes)
    assert np.array_equal(plain, indexed)
    with pytest.raises(ValueError, match="entropy indexes"):
        decode_batch_into(images, [H] * n, [W] * n, plain, train=True, indexes=indexes[:-1])
