"""Read an encoded image's format and size from its header, without decoding it.

Only the first bytes are parsed (JPEG SOF marker, PNG IHDR chunk, WebP VP8/VP8L/VP8X chunk), so
this costs microseconds, not the milliseconds of a decode. Everything read is bounds-checked:
the bytes come from untrusted files.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "EncodedImage",
    "ImageInfo",
    "probe_image",
    "size_problem",
    "FORMAT_IDS",
    "FORMAT_NAMES",
    "JPEG_INDEXED_ID",
    "MAX_SIDE",
]

FORMAT_IDS = {"jpeg": 1, "png": 2, "webp": 3}
FORMAT_NAMES = {v: k for k, v in FORMAT_IDS.items()}
#: The stored format id of a JPEG kept with its entropy index (format version 3): its bytes,
#: then the index, then the index's length (u32, little-endian). It reads as a "jpeg".
JPEG_INDEXED_ID = 4
#: The largest side each format can describe: JPEG's 16-bit sizes, WebP's 14-bit ones (+1),
#: PNG's 31-bit ones. An image claiming more can never be decoded.
MAX_SIDE = {"jpeg": 65535, "png": 2**31 - 1, "webp": 16384}

# JPEG start-of-frame markers that carry the image size (SOF0..SOF15 less DHT/JPG/DAC).
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    height: int
    width: int


@dataclass(frozen=True)
class EncodedImage:
    """An image field's value: the encoded bytes as stored, with their format and size.

    ``entropy_index``: for a baseline JPEG written with one (``Writer(jpeg_index=True)``, the
    default), where in its entropy-coded data each stretch of MCUs starts, so that decoding a
    crop decodes only the MCUs around it (``_core.jpeg_entropy_index``); None otherwise. It
    is not part of ``data``, which is always the image's bytes exactly as given, nor of the
    image's identity: images with the same bytes, format and size are equal."""

    data: bytes | memoryview  # a memoryview where a reader asked for no copy (Dataset.read_into)
    format: str
    height: int
    width: int
    entropy_index: bytes | memoryview | None = field(default=None, compare=False)

    def decode(self):
        """Decode to an ``(height, width, 3)`` uint8 numpy array (RGB) with Pillow."""
        import io

        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as im:
            return np.asarray(im.convert("RGB"))

    def __repr__(self) -> str:
        return (
            f"EncodedImage(format={self.format!r}, height={self.height}, width={self.width}, "
            f"{len(self.data)} bytes)"
        )


def size_problem(format: str, height: int, width: int) -> str | None:
    """Why an image of ``format`` cannot be ``height`` x ``width`` pixels, or None."""
    limit = MAX_SIDE[format]
    if height > limit or width > limit:
        return f"a {format} image cannot be {height} x {width} pixels (at most {limit:,} a side)"
    return None


def probe_image(data: bytes | memoryview) -> ImageInfo | None:
    """The format and size of an encoded JPEG, PNG or WebP image, or None if it is not one."""
    head = bytes(data[:32])
    if head[:3] == b"\xff\xd8\xff":
        return _probe_jpeg(data)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return ImageInfo("png", height, width)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _probe_webp(bytes(data[:64]))
    return None


def _probe_jpeg(data: bytes | memoryview) -> ImageInfo | None:
    n = len(data)
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        seg_len = (data[pos + 2] << 8) | data[pos + 3]
        if seg_len < 2:
            return None
        if marker in _SOF_MARKERS:
            if pos + 9 > n:
                return None
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            return ImageInfo("jpeg", height, width)
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any SOF
            return None
        pos += 2 + seg_len
    return None


def _probe_webp(head: bytes) -> ImageInfo | None:
    chunk = head[12:16]
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return ImageInfo("webp", height & 0x3FFF, width & 0x3FFF)
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return ImageInfo("webp", ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return ImageInfo("webp", height, width)
    return None
