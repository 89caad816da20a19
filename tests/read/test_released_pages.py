"""Pages a process maps to read a dataset are let go once read (fastload.io.mapping
release_pages): its RSS stops growing with what it has read, the data reads the same, and
memory that is not a mapped file is never touched."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastload.io.mapping import FAULT_REGION, map_readonly, release_pages


def resident(view: memoryview) -> int:
    """Pages of ``view`` this process has mapped, from /proc/self/smaps (its Rss line)."""
    start = int(np.frombuffer(view, np.uint8).ctypes.data)
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo = int(head.split("-")[0], 16)
                inside = lo <= start < int(head.split("-")[1], 16)
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("the mapping is not in smaps")


def mapped_file(tmp_path, nbytes: int, seed: int) -> tuple[np.ndarray, memoryview]:
    """``nbytes`` random bytes written to a file, and a map of that file (nothing touched)."""
    data = np.random.default_rng(seed).integers(0, 255, nbytes, dtype=np.uint8)
    path = tmp_path / "f"
    data.tofile(path)
    fd = os.open(path, os.O_RDONLY)
    view = map_readonly(fd, len(data))
    os.close(fd)
    return data, view


def test_released_pages_leave_the_process_and_read_the_same(tmp_path):
    data, view = mapped_file(tmp_path, 8 << 20, seed=0)
    pages = np.frombuffer(view, np.uint8)
    assert int(pages[::4096].sum()) == int(data[::4096].sum())  # every page read
    assert resident(view) >= len(data) - 4096
    assert release_pages(view[10 : 4 << 20]) == 4 << 20  # its pages, partial ones too
    assert resident(view) == len(data) - (4 << 20)
    # Widened to whole 1 MiB-aligned blocks of addresses.
    low = int(pages.ctypes.data)
    first, end = (low + (9 << 19)) >> 20 << 20, -(-(low + (5 << 20) + 1) >> 20) << 20
    assert release_pages(view[9 << 19 : (5 << 20) + 1], region=1 << 20) == end - first
    assert resident(view) == len(data) - (4 << 20) - (end - max(first, low + (4 << 20)))
    with pytest.raises(ValueError, match="multiple of the page size"):
        release_pages(view[:10], region=5000)
    # A region larger than the map: never past either of its ends.
    top = low + len(data)
    assert release_pages(view[-1:], region=64 << 20) == top - max(low, (top - 1) >> 26 << 26)
    assert release_pages(view) == len(data)
    assert resident(view) == 0
    np.testing.assert_array_equal(pages, data)  # mapped again as read, unchanged


def test_what_a_read_fault_mapped_beside_a_view_goes_with_it(tmp_path):
    # A fault maps more than the page it touched: fault-around, or a whole large folio of
    # the page cache (1 MiB on a freshly written file seen on Linux 6.18). Released by
    # FAULT_REGION, whatever the kernel mapped goes.
    data, view = mapped_file(tmp_path, 6 << 20, seed=1)
    pages = np.frombuffer(view, np.uint8)
    for at in (0, 3 << 20, (6 << 20) - 1):
        assert int(pages[at]) == int(data[at])
        assert resident(view) >= 4096
        assert release_pages(view[at : at + 1], region=FAULT_REGION) > 0
        assert resident(view) == 0, at


def test_memory_that_is_not_a_file_map_is_left_alone():
    buf = bytearray(b"x" * (64 << 10))
    assert release_pages(memoryview(buf)) == 0 and bytes(buf[:4]) == b"xxxx"
    arr = np.ones(1 << 20, np.uint8)
    assert release_pages(memoryview(arr)) == 0 and int(arr.sum()) == 1 << 20


def test_a_loader_worker_lets_go_of_the_images_it_decoded(tmp_path):
    import io

    from PIL import Image

    import fastload

    def jpeg(i: int) -> bytes:
        pixels = np.random.default_rng(i).integers(0, 256, (160, 200, 3), dtype=np.uint8)
        f = io.BytesIO()
        Image.fromarray(pixels).save(f, "JPEG", quality=95)
        return f.getvalue()

    images = [jpeg(i) for i in range(40)]
    assert min(map(len, images)) > 8 * 4096  # each spans whole pages to let go
    with fastload.Writer(tmp_path / "img", {"image": "image", "label": "int64"}) as w:
        for i, data in enumerate(images):
            w.write({"image": data, "label": i})
    ds = fastload.Dataset(tmp_path / "img")
    loader = fastload.DataLoader(  # threads: the dataset's maps are this process's
        ds,
        batch_size=8,
        shuffle=True,
        seed=0,
        num_workers=2,
        worker_type="thread",
        decode={"image": fastload.ImageDecode(32, train=True)},
    )
    assert sum(len(b["label"]) for b in loader) == 40
    shard = ds.shard_reader(0).source.buffer
    # Without the release every page of the ~1.5 MB shard stays mapped. With it, what remains
    # is at most the pages of its header and index (~5% of it) that a thread's lookups mapped
    # after the images' last release.
    assert resident(shard) <= len(shard) // 8, (resident(shard), len(shard))
