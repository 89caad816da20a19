"""Cheap validity checks of encoded images, shared by the image-carrying sources.

The default check reads only headers and trailers (microseconds per image): it catches files
that are not images at all and the most common corruption, a file cut short. ``decode=True``
also decodes the image with Pillow, which catches damage inside the compressed data at the
cost of a full decode.
"""

from __future__ import annotations

import io
import struct

from ..format.imageinfo import probe_image

__all__ = ["IMAGE_SUFFIXES", "image_problem"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type and its (constant) CRC


def image_problem(data: bytes, *, decode: bool = False) -> str | None:
    """Why ``data`` is not a usable JPEG, PNG or WebP image, or None if it is."""
    info = probe_image(data)
    if info is None:
        return f"not a JPEG, PNG or WebP image (it starts with {bytes(data[:8])!r})"
    if info.format == "jpeg" and not _jpeg_complete(data):
        return "truncated JPEG: no end-of-image marker after the image data"
    if info.format == "png" and data.rfind(_PNG_IEND) < 0:
        return "truncated PNG: no IEND chunk"
    if info.format == "webp" and len(data) < 8 + struct.unpack_from("<I", data, 4)[0]:
        return "truncated WebP: the file is shorter than its RIFF header says"
    if decode:
        return _decode_problem(data)
    return None


def _jpeg_complete(data: bytes) -> bool:
    """Whether an end-of-image marker follows the first start-of-scan.

    Searching only after the start of scan matters: an EXIF thumbnail (inside an APP1 segment,
    skipped here by its length) ends with its own end-of-image marker.
    """
    sos = _jpeg_start_of_scan(data)
    return sos is not None and data.rfind(_JPEG_EOI) > sos


def _jpeg_start_of_scan(data: bytes) -> int | None:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:
            return pos
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        else:
            pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return None


def _decode_problem(data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        return f"cannot be decoded ({type(e).__name__}: {e})"
    return None
