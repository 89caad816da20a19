"""JPEGs stored with their entropy index (format version 3, image format id 4): the Writer stores
one by default for each baseline JPEG and none where asked not to or where the JPEG is not one
it is made for; every read path gives the image's bytes exactly as written, with the index
beside them; a stored index that is not the JPEG's is caught by ``verify --deep``; a stored
length that does not fit is a clear record error; convert and its command line pass the choice
through."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fastload
from fastload import _core
from fastload.format.imageinfo import JPEG_INDEXED_ID
from fastload.format.record import RecordDecodeError, RecordLayout
from fastload.format.schema import Schema
from fastload.verify import verify_dataset

SCHEMA = {"image": "image", "label": "int64"}


def photo_jpeg(i: int, **kw) -> bytes:
    y, x = np.mgrid[0:120, 0:200]
    pixels = np.stack([(x * 3 + i) % 256, (y * 2) % 256, (x * y // 50 + 7 * i) % 256], -1)
    f = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(f, "JPEG", quality=85, **kw)
    return f.getvalue()


def png(i: int) -> bytes:
    f = io.BytesIO()
    Image.new("RGB", (4, 3), (i, 2, 3)).save(f, "PNG")
    return f.getvalue()


IMAGES = [photo_jpeg(0), photo_jpeg(1, progressive=True), png(2), photo_jpeg(3)]
INDEXED = [True, False, False, True]


def write(path, **kw):
    with fastload.Writer(path, SCHEMA, **kw) as w:
        for i, data in enumerate(IMAGES):
            w.write({"image": data, "label": i})
    return path


def test_every_read_path_gives_the_bytes_written_and_the_index_beside_them(tmp_path):
    with fastload.Dataset(write(tmp_path / "ds")) as ds:
        views = ds.read_into(list(range(len(IMAGES))), image_views=["image"])["image"]
        batch = ds.get_batch(list(range(len(IMAGES))))["image"]
        for i, data in enumerate(IMAGES):
            for image in (ds[i]["image"], views[i], batch[i]):
                assert bytes(image.data) == data, i
                fmt = "png" if data == IMAGES[2] else "jpeg"
                assert (image.format, image.height, image.width) == (
                    fmt,
                    *((3, 4) if i == 2 else (120, 200)),
                )
                if INDEXED[i]:
                    assert bytes(image.entropy_index) == _core.jpeg_entropy_index(data), i
                else:
                    assert image.entropy_index is None, i
            assert type(ds[i]["image"].entropy_index) in ((bytes,) if INDEXED[i] else (type(None),))
        assert isinstance(views[0].data, memoryview) and isinstance(
            views[0].entropy_index, memoryview
        )
    assert verify_dataset(str(tmp_path / "ds"), deep=True).ok


def test_without_the_index_jpegs_are_stored_as_given(tmp_path):
    with_index = write(tmp_path / "a")
    without = write(tmp_path / "b", jpeg_index=False)
    with fastload.Dataset(without) as ds:
        assert all(ds[i]["image"].entropy_index is None for i in range(len(IMAGES)))
        assert [bytes(ds[i]["image"].data) for i in range(len(IMAGES))] == IMAGES
    with fastload.Dataset(with_index) as a, fastload.Dataset(without) as b:
        extra = sum(len(_core.jpeg_entropy_index(d)) + 4 for d, i in zip(IMAGES, INDEXED) if i)
        grew = sum(s.raw_bytes for s in a.manifest.shards) - sum(
            s.raw_bytes for s in b.manifest.shards
        )
        assert abs(grew - extra) < 8 * len(IMAGES)  # (records are padded to an alignment)


def encoded(layout: RecordLayout, data: bytes) -> bytearray:
    return bytearray(layout.encode({"image": data, "label": 7}))


def test_a_stored_index_that_is_not_the_jpegs_is_caught_by_the_deep_check():
    layout = RecordLayout(Schema(SCHEMA), jpeg_index=True)
    data = IMAGES[0]
    record = encoded(layout, data)
    meta = np.frombuffer(bytes(record), dtype=layout.header_dtype, count=1)[0]["image"]
    assert int(meta["format"]) == JPEG_INDEXED_ID
    assert layout.problem(memoryview(bytes(record))) is None
    index_at = len(record) - 4 - len(_core.jpeg_entropy_index(data))
    record[index_at + 40] ^= 0x01  # an entry's bit position
    assert "entropy index is not the one its JPEG gives" in layout.problem(
        memoryview(bytes(record))
    )


def test_an_index_length_that_does_not_fit_is_a_record_error():
    layout = RecordLayout(Schema(SCHEMA), jpeg_index=True)
    record = encoded(layout, IMAGES[3])
    record[-4:] = (len(record) * 2).to_bytes(4, "little")
    with pytest.raises(RecordDecodeError, match="cannot hold an index of"):
        layout.decode(memoryview(bytes(record)))


def test_a_reader_without_the_setting_reads_both(tmp_path):
    """Reading needs no option: each image says how it is stored."""
    reader = RecordLayout(Schema(SCHEMA))
    for flag in (True, False):
        record = encoded(RecordLayout(Schema(SCHEMA), jpeg_index=flag), IMAGES[0])
        image = reader.decode(memoryview(bytes(record)))["image"]
        assert image.data == IMAGES[0] and (image.entropy_index is not None) == flag


def test_convert_and_its_command_line_pass_the_choice_through(tmp_path):
    root = tmp_path / "folder" / "cls"
    root.mkdir(parents=True)
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(photo_jpeg(i))
    fastload.convert(tmp_path / "folder", tmp_path / "api", workers=1, progress=False)
    fastload.convert(
        tmp_path / "folder", tmp_path / "api-off", workers=1, progress=False, jpeg_index=False
    )
    command = [sys.executable, "-m", "fastload", "convert", str(tmp_path / "folder")]
    subprocess.run(
        [*command, str(tmp_path / "cli-off"), "--no-jpeg-index", "--no-progress"],
        check=True,
        timeout=120,
    )
    for name, indexed in (("api", True), ("api-off", False), ("cli-off", False)):
        with fastload.Dataset(tmp_path / name) as ds:
            assert [ds[i]["image"].entropy_index is not None for i in range(3)] == [indexed] * 3, (
                name
            )
    assert (
        "--no-jpeg-index"
        in subprocess.run(
            [sys.executable, "-m", "fastload", "convert", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
