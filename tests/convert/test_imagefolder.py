"""The imagefolder source: labels, original bytes, order, symlinks, corrupt images."""

from __future__ import annotations

import os

import pytest

from fastload import ConvertError, SourceRecordError
from fastload.convert import convert
from fastload.convert.imagefolder import ImageFolderSource
from fastload.convert.images import image_problem

from .conftest import dir_bytes, jpeg_bytes, make_imagefolder, png_bytes, read_all


def test_round_trip_keeps_bytes_labels_and_order(tmp_path):
    expected = make_imagefolder(tmp_path / "in")
    result = convert(tmp_path / "in", tmp_path / "out", progress=False, shard_size=600)
    assert result.records == len(expected) and result.skipped == 0
    assert result.tasks > 2 and result.shards > 2
    assert "0=cat, 1=dog, 2=eel" in result.notes[0]
    records = read_all(tmp_path / "out")
    assert [(r["filename"], r["label"], r["image"].data) for r in records] == expected
    assert records[0]["image"].format == "jpeg"


def test_workers_give_identical_output(tmp_path):
    make_imagefolder(tmp_path / "in", n=30)
    for w in (1, 2):
        convert(tmp_path / "in", tmp_path / f"out{w}", workers=w, shard_size=500, progress=False)
    one, two = dir_bytes(tmp_path / "out1"), dir_bytes(tmp_path / "out2")
    assert len(one) > 3 and one == two


def test_classes_hidden_files_and_nested_folders(tmp_path):
    root = tmp_path / "in"
    (root / "b" / "sub").mkdir(parents=True)
    (root / "a").mkdir()
    (root / ".hidden").mkdir()
    (root / "b" / "sub" / "x.JPEG").write_bytes(jpeg_bytes(1))
    (root / "a" / "y.png").write_bytes(png_bytes(2))
    (root / "a" / ".z.jpg").write_bytes(jpeg_bytes(3))
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "top.jpg").write_bytes(jpeg_bytes(4))  # not in a class folder: ignored
    convert(root, tmp_path / "out", progress=False)
    records = read_all(tmp_path / "out")
    assert [(r["filename"], r["label"]) for r in records] == [("a/y.png", 0), ("b/sub/x.JPEG", 1)]


def test_truncated_jpeg_fails_naming_the_file(tmp_path):
    make_imagefolder(tmp_path / "in", n=6)
    bad = tmp_path / "in" / "dog" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:-40])
    with pytest.raises(SourceRecordError, match=r"dog/0001\.jpg: truncated JPEG"):
        convert(tmp_path / "in", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_skip_bad_skips_and_counts(tmp_path):
    expected = make_imagefolder(tmp_path / "in", n=9)
    (tmp_path / "in" / "cat" / "0000.jpg").write_bytes(b"GIF89a not a supported image")
    (tmp_path / "in" / "eel" / "0002.jpg").write_bytes(jpeg_bytes(2)[:100])
    result = convert(
        tmp_path / "in", tmp_path / "out", progress=False, skip_bad=True, workers=2, shard_size=400
    )
    assert result.skipped == 2 and result.records == 7
    assert any("cat/0000.jpg: not a JPEG, PNG or WebP" in e for e in result.skip_examples)
    names = [r["filename"] for r in read_all(tmp_path / "out")]
    assert names == [e[0] for e in expected if e[0] not in ("cat/0000.jpg", "eel/0002.jpg")]


def test_decode_check_catches_corrupt_image_data(tmp_path):
    make_imagefolder(tmp_path / "in", n=3)
    data = bytearray(jpeg_bytes(0))
    data[data.index(b"\xff\xc4") + 4] = 0x37  # an invalid Huffman table class
    (tmp_path / "in" / "cat" / "0000.jpg").write_bytes(bytes(data))
    assert image_problem(bytes(data)) is None  # headers and end marker look fine
    convert(tmp_path / "in", tmp_path / "out1", progress=False)
    with pytest.raises(SourceRecordError, match="cat/0000.jpg: cannot be decoded"):
        convert(tmp_path / "in", tmp_path / "out2", progress=False, decode_check=True)


def test_image_problem_checks():
    assert image_problem(jpeg_bytes(5)) is None
    assert image_problem(png_bytes(5)) is None
    assert "truncated PNG" in image_problem(png_bytes(5)[:-12])
    assert "not a JPEG" in image_problem(b"hello")


def test_symlinks_inside_root_are_followed_outside_are_bad(tmp_path):
    root = tmp_path / "data"
    make_imagefolder(root, n=3)
    evil = tmp_path / "data-evil"  # shares the prefix "data": startswith would accept it
    evil.mkdir()
    (evil / "secret.jpg").write_bytes(jpeg_bytes(9))
    os.symlink(evil / "secret.jpg", root / "cat" / "zz-out.jpg")
    os.symlink(root / "dog" / "0001.jpg", root / "cat" / "zz-in.jpg")
    os.symlink(evil, root / "dog" / "linked-dir")
    with pytest.raises(SourceRecordError, match="zz-out.jpg: is a symlink to .*outside"):
        convert(root, tmp_path / "out", progress=False)
    result = convert(root, tmp_path / "out", progress=False, skip_bad=True)
    assert result.skipped == 2  # the file link and the folder link
    names = [r["filename"] for r in read_all(tmp_path / "out")]
    assert "cat/zz-in.jpg" in names and "cat/zz-out.jpg" not in names
    assert not any("secret" in n for n in names)


def test_symlink_loop_terminates(tmp_path):
    root = tmp_path / "in"
    make_imagefolder(root, n=3)
    os.symlink(root / "cat", root / "cat" / "loop")
    result = convert(root, tmp_path / "out", progress=False)
    assert result.records == 3


def test_empty_or_missing_input_is_an_error(tmp_path):
    (tmp_path / "in" / "cat").mkdir(parents=True)
    with pytest.raises(ConvertError, match="no images"):
        ImageFolderSource(str(tmp_path / "in"), shard_size=1 << 20).tasks()
    with pytest.raises(ConvertError, match="not a directory"):
        ImageFolderSource(str(tmp_path / "nope"), shard_size=1 << 20)
