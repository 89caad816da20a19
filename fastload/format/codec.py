"""Block compression: each block is compressed alone, or stored raw when that does not pay."""

from __future__ import annotations

import threading

import zstandard

from .spec import CODEC_NONE, CODEC_ZSTD

__all__ = ["BlockCompressor", "decompress_block", "BlockCodecError", "COMPRESSIONS"]

COMPRESSIONS = ("auto", "zstd", "none")
# Per mode, the least fraction of a block zstd must save for its compressed form to be kept.
#
# "zstd": 5%. JPEG bytes gain ~1% and would cost a decompression on every read for nothing.
#
# "auto" (the default): half. A compressed block costs its reader the whole decompression
# (~1.3 ms a MiB of zstd -3 output on a shared 2-core machine: about as much CPU as a loader
# spends on the same MiB read raw), once in each process that reads it at random before its
# decompressed copy exists, and that copy takes the raw size on local disk anyway: what zstd
# buys is the stored bytes (disk, network). Where it at least halves them (text, JSON, sparse
# numeric columns: 3-10x) that pays; token ids (zstd saves ~10-30%) or other nearly random
# numbers, read in a random order, are faster to read and not much larger stored raw.
_MIN_SAVING = {"zstd": 0.05, "auto": 0.5}
# A block larger than 4 samples is first judged by compressing a sample from its middle, so
# JPEG or other already-compressed bytes cost one small probe, not a whole zstd pass (which
# took a fifth of an image convert's time). Deterministic: the same bytes, the same choice.
_SAMPLE_SIZE = 64 << 10


class BlockCodecError(ValueError):
    """A stored block does not decompress to what the index says."""


class BlockCompressor:
    """Compresses blocks for the writer; chooses per block between zstd and raw."""

    def __init__(self, compression: str = "auto", level: int = 3) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if not -7 <= level <= 22:
            raise ValueError(f"zstd level must be in -7..22, got {level}")
        self.compression = compression
        self.level = level
        self._keep_below = 1 - _MIN_SAVING.get(compression, 0.0)  # of the raw size
        # Content size lets readers bound the output; the frame checksum catches corruption
        # that slips past the block checksum (e.g. a bug in our own writer).
        self._zstd = (
            zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
            if compression != "none"
            else None
        )

    def compress(self, raw: bytes | bytearray | memoryview) -> tuple[int, bytes | memoryview]:
        """``(codec id, stored bytes)`` for one block."""
        zstd, keep = self._zstd, self._keep_below
        if zstd is not None and len(raw) > 0 and _worth_trying(zstd, raw, keep):
            packed = zstd.compress(raw)
            if len(packed) <= len(raw) * keep:
                return CODEC_ZSTD, packed
        return CODEC_NONE, memoryview(raw)


def _worth_trying(
    zstd: zstandard.ZstdCompressor, raw: bytes | bytearray | memoryview, keep: float
) -> bool:
    if len(raw) <= 4 * _SAMPLE_SIZE:
        return True
    start = (len(raw) - _SAMPLE_SIZE) // 2
    sample = memoryview(raw).cast("B")[start : start + _SAMPLE_SIZE]
    return len(zstd.compress(sample)) <= _SAMPLE_SIZE * keep


# A ZstdDecompressor must not be used by two threads at once (python-zstandard releases the GIL
# while decompressing, and concurrent use of one context corrupts the output): one per thread.
_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def decompress_block(codec: int, stored: bytes | memoryview, raw_size: int) -> bytes | memoryview:
    """The raw bytes of a block. ``raw_size`` comes from the (already bounds-checked) index."""
    if codec == CODEC_NONE:
        if len(stored) != raw_size:
            raise BlockCodecError(f"raw block has {len(stored)} bytes, index says {raw_size}")
        return stored
    if codec == CODEC_ZSTD:
        try:
            params = zstandard.get_frame_parameters(stored)
            if params.content_size != raw_size:
                raise BlockCodecError(
                    f"zstd frame declares {params.content_size} bytes, index says {raw_size}"
                )
            out = _decompressor().decompress(stored, max_output_size=raw_size)
        except zstandard.ZstdError as e:
            raise BlockCodecError(f"zstd: {e}") from None
        if len(out) != raw_size:
            raise BlockCodecError(
                f"zstd block decompressed to {len(out)} bytes, index says {raw_size}"
            )
        return out
    raise BlockCodecError(f"unknown codec id {codec}")
