"""The contenders that are not fastload, each run by convert.py as its own process.

Run as ``python _writers.py KIND SRC DST [options]``; prints one JSON line with ``write_s``
(the timed part: listing, reading and writing, after imports) and what was written.
Only the standard library is imported at the top: MDSWriter runs from a separate venv
(benchmarks/.venv-streaming) that has no fastload, webdataset or zstandard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def list_imagefolder(src: str) -> list[tuple[str, int]]:
    """``(path, label)`` for every image, classes and files in sorted order (ImageFolder's)."""
    classes = sorted(e.name for e in os.scandir(src) if e.is_dir())
    items = []
    for label, cls in enumerate(classes):
        folder = os.path.join(src, cls)
        items += [(os.path.join(folder, name), label) for name in sorted(os.listdir(folder))]
    return items


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_webdataset(src: str, dst: str, shard_bytes: int) -> dict:
    import webdataset as wds

    os.makedirs(dst)
    start = time.perf_counter()
    items = list_imagefolder(src)
    # maxcount is set out of reach so that, as for the others, size alone cuts shards.
    with wds.ShardWriter(
        os.path.join(dst, "shard-%06d.tar"), maxsize=shard_bytes, maxcount=1 << 40, verbose=0
    ) as sink:
        for i, (path, label) in enumerate(items):
            sink.write({"__key__": f"{i:08d}", "jpg": read(path), "cls": label})
    return {
        "write_s": time.perf_counter() - start,
        "records": len(items),
        "webdataset": wds.__version__ if hasattr(wds, "__version__") else "?",
    }


def write_mds(src: str, dst: str, shard_bytes: int, compression: str, encoding: str) -> dict:
    import streaming
    import torch
    from streaming import MDSWriter

    start = time.perf_counter()
    items = list_imagefolder(src)
    columns = {"image": encoding, "label": "int"}
    with MDSWriter(
        out=dst,
        columns=columns,
        size_limit=shard_bytes,
        compression=None if compression == "none" else compression,
    ) as out:
        for path, label in items:
            out.write({"image": load_for_mds(path, encoding), "label": label})
    return {
        "write_s": time.perf_counter() - start,
        "records": len(items),
        "torch": torch.__version__,
        "streaming": streaming.__version__,
        "python": sys.executable,
    }


def load_for_mds(path: str, encoding: str):
    """MDS 'bytes' takes raw bytes; its 'jpeg' takes only a PIL image and, when that image
    was opened from a JPEG file, copies the file's bytes (no re-encode)."""
    if encoding == "bytes":
        return read(path)
    from PIL import Image

    return Image.open(path)


def zstd_range(src: str, dst: str, offset: int, length: int, block: int, level: int):
    """Compress ``length`` bytes of ``src`` from ``offset``, block by block, into ``dst``;
    returns (bytes written, start, end) on the machine-wide monotonic clock."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level)
    start = time.perf_counter()
    written = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        f.seek(offset)
        for _ in range(0, length, block):
            chunk = f.read(min(block, offset + length - f.tell()))
            written += out.write(cctx.compress(chunk))
    return written, start, time.perf_counter()


def write_zstd(src: str, dst: str, workers: int, block: int, level: int) -> dict:
    """The practical limit for compressing token data: plain zstd on ``workers`` processes,
    each taking a contiguous, block-aligned share of the file. Timed from the pool's start to
    its end, as fastload's convert() time includes starting its workers."""
    from concurrent.futures import ProcessPoolExecutor

    os.makedirs(dst)
    size = os.path.getsize(src)
    blocks = -(-size // block)
    cuts = [min(size, (blocks * i // workers) * block) for i in range(workers + 1)]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(
                zstd_range,
                src,
                os.path.join(dst, f"part-{i}.zst"),
                cuts[i],
                cuts[i + 1] - cuts[i],
                block,
                level,
            )
            for i in range(workers)
        ]
        done = [job.result() for job in jobs]
    return {
        "write_s": time.perf_counter() - start,
        "records": blocks,
        "compressed_bytes": sum(n for n, _, _ in done),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["webdataset", "mds", "zstd"])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--shard-bytes", type=int, default=64 << 20)
    p.add_argument("--compression", default="none", help="mds: none or zstd")
    p.add_argument("--encoding", default="bytes", help="mds image column: bytes or jpeg")
    p.add_argument("--workers", type=int, default=2, help="zstd: processes")
    p.add_argument("--block-size", type=int, default=1 << 20, help="zstd: bytes per block")
    p.add_argument("--level", type=int, default=3, help="zstd: level")
    a = p.parse_args()
    if a.kind == "webdataset":
        result = write_webdataset(a.src, a.dst, a.shard_bytes)
    elif a.kind == "mds":
        result = write_mds(a.src, a.dst, a.shard_bytes, a.compression, a.encoding)
    else:
        result = write_zstd(a.src, a.dst, a.workers, a.block_size, a.level)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
