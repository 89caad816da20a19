"""Block compression: choice of codec, bounds on decompression, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zstandard

from fastload.format.codec import BlockCodecError, BlockCompressor, decompress_block
from fastload.format.spec import CODEC_NONE, CODEC_ZSTD

from .formattools import index_bytes


def test_compressor_picks_zstd_only_when_it_pays():
    c = BlockCompressor("zstd")
    codec, stored = c.compress(b"a" * 4000)
    assert codec == CODEC_ZSTD and len(stored) < 100
    assert decompress_block(codec, stored, 4000) == b"a" * 4000
    random = index_bytes(1, 4000)
    codec, stored = c.compress(random)
    assert codec == CODEC_NONE and bytes(stored) == random
    assert BlockCompressor("none").compress(b"a" * 4000)[0] == CODEC_NONE
    assert BlockCompressor("zstd").compress(b"")[0] == CODEC_NONE


def token_ids(n: int, seed: int = 0) -> bytes:
    """uint16 ids drawn from a skewed distribution over a 50k vocabulary, as tokenized text
    is: zstd -3 saves some 10-30% of such bytes, not half."""
    rng = np.random.default_rng(seed)
    return (rng.zipf(1.2, n) % 50_000).astype(np.uint16).tobytes()


def test_auto_keeps_zstd_only_where_it_halves_the_block():
    auto, zstd = BlockCompressor("auto"), BlockCompressor("zstd")
    assert BlockCompressor().compression == "auto"  # the default
    text = b"".join(b'{"id": %d, "text": "the quick brown fox"}\n' % i for i in range(2000))
    for c in (auto, zstd):
        codec, stored = c.compress(text)
        assert codec == CODEC_ZSTD and len(stored) * 2 <= len(text)
        assert decompress_block(codec, stored, len(text)) == text
    tokens = token_ids(1 << 19)  # 1 MiB: judged by a sample first, then whole
    codec, packed = zstd.compress(tokens)
    saving = 1 - len(packed) / len(tokens)
    assert codec == CODEC_ZSTD and 0.05 <= saving < 0.5  # zstd keeps what auto does not
    codec, stored = auto.compress(tokens)
    assert codec == CODEC_NONE and bytes(stored) == tokens
    small = token_ids(3000, seed=1)  # below the sample size: compressed whole to judge
    assert auto.compress(small)[0] == CODEC_NONE
    assert zstd.compress(small)[0] == CODEC_ZSTD


def test_compressor_rejects_bad_options():
    with pytest.raises(ValueError, match="compression"):
        BlockCompressor("gzip")
    with pytest.raises(ValueError, match="level"):
        BlockCompressor("zstd", level=99)


def test_decompress_checks_sizes_and_codec():
    stored = zstandard.ZstdCompressor(write_content_size=True).compress(b"x" * 1000)
    with pytest.raises(BlockCodecError, match="declares 1000 bytes, index says 999"):
        decompress_block(CODEC_ZSTD, stored, 999)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 1000)
    with pytest.raises(BlockCodecError):  # no declared size: never decompressed unbounded
        decompress_block(CODEC_ZSTD, no_size, 1000)
    with pytest.raises(BlockCodecError, match="zstd"):
        decompress_block(CODEC_ZSTD, stored[: len(stored) // 2], 1000)
    with pytest.raises(BlockCodecError, match="zstd"):
        decompress_block(CODEC_ZSTD, b"\x00\x01", 1000)
    with pytest.raises(BlockCodecError, match="raw block has 3 bytes, index says 4"):
        decompress_block(CODEC_NONE, b"abc", 4)
    with pytest.raises(BlockCodecError, match="unknown codec id 7"):
        decompress_block(7, b"abc", 3)


def test_decompression_is_safe_from_many_threads():
    """Regression: one shared ZstdDecompressor used from several threads returned garbage
    ("Restored data doesn't match checksum"); readers are used from loader threads."""
    c = BlockCompressor("zstd")
    blocks = []
    for k in range(6):
        raw = bytes((j * (k + 3)) % 251 for j in range(1 << 18))
        codec, stored = c.compress(raw)
        assert codec == CODEC_ZSTD
        blocks.append((bytes(stored), raw))
    errors: list = []

    def work(t: int) -> None:
        for j in range(25):
            stored, raw = blocks[(t + j) % len(blocks)]
            try:
                if bytes(decompress_block(CODEC_ZSTD, stored, len(raw))) != raw:
                    errors.append("wrong bytes")
            except Exception as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
