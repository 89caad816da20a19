"""Decode an encoded image to an HWC uint8 pixel array, decoding as little as the crop allows.

Four ways, all returning a :class:`Decoded`:

``libjpeg-region`` (JPEG, where ``fastload._core`` was built with libjpeg-turbo)
    Decodes only the rectangle the crop needs, at its DCT scale, into a reused buffer: rows
    above it are entropy-decoded only, columns beside it are not transformed, rows below it
    are not read. The pixels are a whole-image decode's, bit for bit (the region is one pixel
    wider than used on each side, for chroma upsampling). A random crop covers about half an
    image, so this decodes a crop in ~0.8x the time of a whole-image decode (measured on
    640x480 JPEGs). CMYK/YCCK JPEGs, and data libjpeg warns about, go to ``simplejpeg``
    (or Pillow), which decides what is an error.
``pillow`` (JPEG)
    Pillow's own libjpeg-turbo decoder, driven directly: it decodes at a 1/2, 1/4 or 1/8 DCT
    scale (what ``Image.draft`` asks for) and **stops at the last row the crop needs**, into a
    reused RGBX buffer that Pillow writes in place (no copy out of Pillow). This uses two
    private Pillow names (``Image._getdecoder``, the decoder's ``setimage``); it is checked
    against ``Image.open(...).draft(...)`` on first use and, if anything differs, replaced by
    ``pillow-draft``.
``pillow-draft`` (JPEG)
    The same scaled decode through Pillow's public API (``draft`` then ``load``), whole image.
``simplejpeg`` (JPEG, if the package is installed)
    TurboJPEG's scaled decode straight into a reused RGB buffer; whole image, no row limit.

PNG, WebP, and JPEGs that are not 3-channel YCbCr/RGB (grayscale, CMYK, YCCK) take
:func:`decode_any`: Pillow, whole image, converted to RGB (alpha dropped, not composited;
palette expanded; 16-bit scaled to 8). EXIF orientation is ignored everywhere, as by
``PIL.Image.open`` and torchvision's ``decode_jpeg`` default: pixels come in stored order.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple, Union

import numpy as np
from PIL import Image

from .. import _core
from .errors import DecodeError
from .scratch import scratch

__all__ = [
    "Decoded",
    "Region",
    "pillow_rows_works",
    "JPEG_BACKENDS",
    "available_jpeg_backends",
    "default_jpeg_backend",
    "dct_scale",
    "decode_jpeg",
    "decode_any",
    "is_jpeg",
]

Buffer = Union[bytes, bytearray, memoryview]

try:  # optional: TurboJPEG's API, a faster whole-image decode than Pillow's
    import simplejpeg as _simplejpeg
except Exception:  # pragma: no cover - depends on the environment
    _simplejpeg = None


@dataclass
class Decoded:
    """Decoded pixels: ``pixels`` is ``(rows, cols, C)`` uint8 with C = 3 (RGB) or 4 (RGBX,
    the 4th byte is padding). ``rows`` may stop short of the image's (scaled) height when only
    the top rows were needed. ``scale`` is decoded pixels per original pixel (1, 1/2, 1/4
    or 1/8): decoded pixel ``j`` covers original pixels ``[j / scale, (j + 1) / scale)``
    on both axes (libjpeg pads the last, partial block when the size is not a multiple)."""

    pixels: np.ndarray
    scale: float
    #: The decoded pixel that ``pixels[0, 0]`` is (a region decode starts past the corner).
    top: int = 0
    left: int = 0


class Region(NamedTuple):
    """The decoded pixels a caller needs, rows [top, bottom) and columns [left, right), at
    the decode's scale; bounds past the image are fine (clamped). A backend may decode more
    (all of it, or every row down to ``bottom``)."""

    top: int
    left: int
    bottom: int
    right: int


def is_jpeg(data: Buffer) -> bool:
    return bytes(data[:3]) == b"\xff\xd8\xff"


def dct_scale(crop_h: float, crop_w: float, out_h: int, out_w: int) -> int:
    """The largest of 8, 4, 2, 1 that still leaves the crop at least ``out`` pixels on both
    axes, i.e. the DCT scale at which the crop is still only ever downsampled."""
    fit = min(crop_h / out_h, crop_w / out_w)
    for s in (8, 4, 2):
        if fit >= s:
            return s
    return 1


def _check_size(got_h: int, got_w: int, height: int, width: int) -> None:
    if (got_h, got_w) != (height, width):
        raise DecodeError(f"the image is {got_w}x{got_h} but its record says {width}x{height}")


# ------------------------------------------------------------------------- generic Pillow


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Pixels of any Pillow image as an (H, W, 3) uint8 RGB array."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode != "F":
            a = a.astype(np.int64) >> 8  # 16-bit samples to 8 bits
        a = np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    with warnings.catch_warnings():
        # "Palette images with Transparency expressed in bytes should be converted to RGBA"
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(im.convert("RGB"))


def decode_any(data: Buffer, scale: int, height: int, width: int) -> Decoded:
    """Decode any image Pillow can open to RGB; JPEGs at DCT ``scale`` (1, 2, 4 or 8)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_size(im.size[1], im.size[0], height, width)
            factor = 1.0
            if im.format == "JPEG" and scale > 1:
                drafted = im.draft(im.mode, (width // scale, height // scale))
                if drafted is not None:
                    factor = width / drafted[1][2]
            im.load()
            pixels = _to_rgb_array(im)
    except DecodeError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise DecodeError(f"cannot decode image ({type(e).__name__}: {e})") from e
    return Decoded(pixels, 1.0 / factor)


# ---------------------------------------------------------------------- JPEG via Pillow


def _pillow_rows(
    data: Buffer, scale: int, rows_needed: int, size_ok: Callable[[int, int], bool]
) -> Decoded | None:
    """Pillow's JPEG decoder at 1/``scale``, stopping after ``rows_needed`` decoded rows,
    into a reused RGBX buffer. None if this JPEG is not plain 3-channel RGB/YCbCr.

    Data damaged or missing only past those rows is not looked at, so it is not an error
    here (a whole-image decode would raise); the shard checksums catch storage damage."""
    im = Image.open(io.BytesIO(data))
    try:
        tile = im.tile
        if (
            im.mode != "RGB"
            or len(tile) != 1
            or tile[0][0] != "jpeg"
            or tile[0][2] != 0
            or tile[0][3] != ("RGB", "")
        ):
            return None
        width, height = im.size
        if not size_ok(height, width):
            return None
    finally:
        im.close()
    sw, sh = -(-width // scale), -(-height // scale)  # libjpeg rounds scaled sizes up
    rows = max(1, min(sh, rows_needed))
    buf = scratch("pillow-rgbx", (rows, sw, 4))
    buf[rows - 1, :, 3] = 0  # the decoder writes 255 there: tells whether the last row came
    target = Image.frombuffer("RGBX", (sw, rows), buf, "raw", "RGBX", 0, 1)
    decoder = Image._getdecoder("RGBX", "jpeg", ("RGB", ""), (scale, 0))
    try:
        decoder.setimage(target.im, (0, 0, sw, rows))
        consumed, err = decoder.decode(data)
    finally:
        decoder.cleanup()
    # Reading all rows ends in (-1, 0). Stopping early ends in an error from
    # jpeg_finish_decompress ("too few scanlines"), which is expected: what counts is that the
    # last row asked for was written. A truncated stream suspends (consumed >= 0, err 0).
    if not (consumed < 0 and err == 0) and not bool(np.all(buf[rows - 1, :, 3] == 255)):
        if consumed >= 0 and err == 0:
            raise DecodeError("truncated JPEG: the data ends before the rows the crop needs")
        raise DecodeError(f"corrupt JPEG (decoder error {err})")
    return Decoded(buf, 1.0 / scale)


_selftest_lock = threading.Lock()
_pillow_rows_ok: bool | None = None


def pillow_rows_works() -> bool:
    """Whether decoding only the rows needed (through Pillow's private API) gives the same
    pixels as its public draft() path; checked once, at the first call."""
    global _pillow_rows_ok
    if _pillow_rows_ok is not None:
        return _pillow_rows_ok
    with _selftest_lock:
        if _pillow_rows_ok is None:
            try:
                # a fixed, busy texture (not numpy.random: its import costs ~80 ms)
                src = (
                    (np.arange(40 * 56 * 3, dtype=np.uint32) * 2654435761 >> 13)
                    .astype(np.uint8)
                    .reshape(40, 56, 3)
                )
                src = np.asarray(
                    Image.fromarray(src).resize(
                        (83, 61),
                        getattr(Image, "Resampling", Image).BICUBIC,  # pyright: ignore[reportAttributeAccessIssue]
                    )
                )
                f = io.BytesIO()
                Image.fromarray(src).save(f, "JPEG", quality=85)
                data = f.getvalue()
                ok = True
                for scale, rows in ((1, 61), (1, 23), (2, 31), (2, 9)):
                    got = _pillow_rows(data, scale, rows, lambda h, w: True)
                    ref = decode_any(data, scale, 61, 83).pixels
                    ok = (
                        ok
                        and got is not None
                        and got.pixels.shape[0] == rows
                        and got.pixels.shape[1] == ref.shape[1]
                        and np.array_equal(got.pixels[:, :, :3], ref[:rows])
                        and bool(np.all(got.pixels[:, :, 3] == 255))
                    )
                _pillow_rows_ok = ok
            except Exception:
                _pillow_rows_ok = False
    return bool(_pillow_rows_ok)


def _decode_pillow(data: Buffer, scale: int, want: Region, height: int, width: int) -> Decoded:
    if not pillow_rows_works():
        return _decode_pillow_draft(data, scale, want, height, width)

    def size_ok(h: int, w: int) -> bool:
        _check_size(h, w, height, width)  # raises DecodeError on a mismatch
        return True

    try:
        decoded = _pillow_rows(data, scale, want.bottom, size_ok)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(f"cannot decode JPEG ({type(e).__name__}: {e})") from e
    if decoded is None:
        return decode_any(data, scale, height, width)
    return decoded


def _decode_pillow_draft(
    data: Buffer, scale: int, want: Region, height: int, width: int
) -> Decoded:
    """Pillow's public API: ``draft`` (DCT scale) and a whole-image ``load``."""
    return decode_any(data, scale, height, width)


# -------------------------------------------------------------------- JPEG via simplejpeg


def _decode_simplejpeg(data: Buffer, scale: int, want: Region, height: int, width: int) -> Decoded:
    sj = _simplejpeg
    if sj is None:  # not installed: the backend is not chosen then, but Pillow copes anyway
        return decode_any(data, scale, height, width)
    try:
        header = sj.decode_jpeg_header(data)
        h, w, colorspace = int(header[0]), int(header[1]), header[2]
    except Exception:
        return decode_any(data, scale, height, width)  # Pillow says what is wrong, or copes
    _check_size(h, w, height, width)
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return decode_any(data, scale, height, width)  # CMYK/YCCK: Pillow's conversion
    buf = scratch("simplejpeg-rgb", (h * w * 3,))
    try:
        if scale > 1:
            pixels = sj.decode_jpeg(
                data, "RGB", min_height=-(-h // scale), min_width=-(-w // scale), buffer=buf
            )
        else:
            pixels = sj.decode_jpeg(data, "RGB", buffer=buf)
    except Exception:
        # strict=True refuses what libjpeg only warns about; Pillow decodes those as Pillow
        # does (and raises for real damage), so behaviour matches the Pillow backends.
        return decode_any(data, scale, height, width)
    if pixels.shape[:2] == (-(-h // scale), -(-w // scale)):
        return Decoded(pixels, 1.0 / scale)
    # TurboJPEG may pick another M/8 factor for tiny images; find the one it used.
    for m in range(1, 9):
        if pixels.shape[:2] == (-(-h * m // 8), -(-w * m // 8)):
            return Decoded(pixels, m / 8)
    return Decoded(pixels, pixels.shape[1] / w)  # pragma: no cover


# -------------------------------------------------------------- JPEG regions via libjpeg

# decode_jpeg_region's status codes (csrc/core/jpeg_region.h)
_REGION_OK, _REGION_NOT_HANDLED, _REGION_SIZE_MISMATCH = 0, 1, 2


def _decode_whole(data: Buffer, scale: int, want: Region, height: int, width: int) -> Decoded:
    """What decodes a JPEG the region path does not take: simplejpeg, else Pillow."""
    if _simplejpeg is not None:
        return _decode_simplejpeg(data, scale, want, height, width)
    return _decode_pillow(data, scale, want, height, width)


def _decode_region(
    data: Buffer, scale: int, want: Region, height: int, width: int, index: Buffer | None = None
) -> Decoded:
    rows = -(-height // scale)
    cols = -(-width // scale)
    top, bottom = max(0, want.top), min(rows, want.bottom)
    # libjpeg widens the columns to whole blocks, never past the image: a full row fits.
    buf = scratch("jpeg-region", (max(1, bottom - top) * cols * 3,))
    status, message, got_h, got_w, row0, col0, n_rows, n_cols, _ = _core.decode_jpeg_region(
        data, scale, height, width, top, want.left, bottom, want.right, buf, index
    )
    if status == _REGION_OK:
        pixels = buf[: n_rows * n_cols * 3].reshape(n_rows, n_cols, 3)
        return Decoded(pixels, 1.0 / scale, row0, col0)
    if status == _REGION_SIZE_MISMATCH:
        _check_size(got_h, got_w, height, width)  # raises
    if status == _REGION_NOT_HANDLED:
        return _decode_whole(data, scale, want, height, width)
    # Refused: the whole-image paths say what is wrong in their own words, as for every
    # other backend (or, for data only libjpeg-turbo's strictness refuses, decode it).
    try:
        return _decode_whole(data, scale, want, height, width)
    except DecodeError as e:
        raise DecodeError(f"{e} (libjpeg: {message})") from e


# ----------------------------------------------------------------------------- choosing

_Decoder = Callable[[Buffer, int, Region, int, int], Decoded]

JPEG_BACKENDS: dict[str, _Decoder] = {
    "pillow": _decode_pillow,
    "pillow-draft": _decode_pillow_draft,
}
if _simplejpeg is not None:
    JPEG_BACKENDS["simplejpeg"] = _decode_simplejpeg
if _core.jpeg_region_available():
    JPEG_BACKENDS["libjpeg-region"] = _decode_region

# Fastest first, as measured by benchmarks/decode.py on ImageNet-like JPEGs (see its results).
_PREFERENCE = ("libjpeg-region", "simplejpeg", "pillow", "pillow-draft")


def available_jpeg_backends() -> list:
    """Names of the JPEG decode paths usable here, fastest first."""
    return [name for name in _PREFERENCE if name in JPEG_BACKENDS]


def default_jpeg_backend() -> str:
    """The JPEG decode path used when none is named: the fastest available."""
    return available_jpeg_backends()[0]


def decode_jpeg(
    data: Buffer,
    scale: int,
    want: Region,
    height: int,
    width: int,
    backend: str | None = None,
    index: Buffer | None = None,
) -> Decoded:
    """Decode a JPEG at 1/``scale`` through ``backend`` (default: the fastest available).
    Only the pixels of ``want`` are guaranteed (more may come: see ``Decoded.top/left``).
    ``index``: the JPEG's entropy index (``EncodedImage.entropy_index``), with which the
    ``libjpeg-region`` backend decodes only the MCUs around ``want`` (the same pixels)."""
    name = backend or default_jpeg_backend()
    try:
        fn = JPEG_BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown or unavailable JPEG backend {name!r}; available: {available_jpeg_backends()}"
        ) from None
    if fn is _decode_region:
        return _decode_region(data, scale, want, height, width, index)
    return fn(data, scale, want, height, width)
