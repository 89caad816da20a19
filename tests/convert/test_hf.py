"""Hugging Face datasets as Parquet and Arrow: features from the schema's ``huggingface``
metadata (Image, ClassLabel, Audio, ArrayXD, sequences, structs), images by path, images found
by sampling where there are no features, ``save_to_disk`` folders and folders of splits.

Files are made two ways: with pyarrow and the metadata written by hand (what ``datasets``
writes, so every case is exact), and with ``datasets`` itself."""

from __future__ import annotations

import io
import json
import subprocess

import datasets  # Hugging Face's, in the test extra
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import fastload
from fastload import ConvertError, SourceRecordError
from fastload.convert.parquet import ParquetSource

from .conftest import cli_command, jpeg_bytes, png_bytes, read_all

pytestmark = pytest.mark.timeout(120)

CLASSES = ["cat", "dog", "eel"]
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
FEATURES = {
    "image": {"_type": "Image"},
    "label": {"names": CLASSES, "_type": "ClassLabel"},
    "vec": {"feature": {"dtype": "float32", "_type": "Value"}, "length": 3, "_type": "List"},
    "ids": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
    "points": {
        "feature": {"feature": {"dtype": "int16", "_type": "Value"}, "length": 2, "_type": "List"},
        "_type": "List",
    },
    "grid": {"shape": [None, 3], "dtype": "float32", "_type": "Array2D"},
    "meta": {"a": {"dtype": "int32", "_type": "Value"}, "b": {"dtype": "string", "_type": "Value"}},
    "audio": {"sampling_rate": 16000, "_type": "Audio"},
    "text": {"dtype": "string", "_type": "Value"},
}


def webp_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4 + i % 3), (i % 256, 90, 10)).save(buf, "WEBP")
    return buf.getvalue()


def hf_table(start: int, n: int, *, image_paths: dict[int, str] | None = None) -> pa.Table:
    """Rows ``start..start+n-1`` in the types datasets stores, with its metadata. Rows in
    ``image_paths`` store their image by path (bytes null)."""
    paths = image_paths or {}
    idx = range(start, start + n)
    images = [
        {"bytes": None, "path": paths[i]} if i in paths else {"bytes": jpeg_bytes(i), "path": None}
        for i in idx
    ]
    columns = {
        "image": pa.array(images, IMAGE),
        "label": pa.array([i % 3 for i in idx], pa.int64()),
        "vec": pa.array([[i, i + 0.5, -i] for i in idx], pa.list_(pa.float32(), 3)),
        "ids": pa.array([list(range(i % 4)) for i in idx], pa.list_(pa.int32())),
        "points": pa.array(
            [[[i, k] for k in range(i % 3)] for i in idx], pa.list_(pa.list_(pa.int16(), 2))
        ),
        "grid": pa.array(
            [[[i, 1, 2]] * (1 + i % 2) for i in idx], pa.list_(pa.list_(pa.float32()))
        ),
        "meta": pa.array(
            [{"a": i, "b": f"m{i}"} for i in idx],
            pa.struct([("a", pa.int32()), ("b", pa.string())]),
        ),
        "audio": pa.array(
            [{"bytes": b"RIFF" + bytes([i % 256]) * 8, "path": f"{i}.wav"} for i in idx], IMAGE
        ),
        "text": pa.array([f"row {i}" for i in idx]),
    }
    metadata = {"huggingface": json.dumps({"info": {"features": FEATURES}})}
    return pa.table(columns).replace_schema_metadata(metadata)


def check_row(r: dict, i: int) -> None:
    assert r["image"].data == jpeg_bytes(i) and r["image"].format == "jpeg"
    assert r["label"] == i % 3
    assert r["vec"].tolist() == [i, i + 0.5, -i] and r["vec"].dtype == np.float32
    assert r["ids"].tolist() == list(range(i % 4))
    assert r["points"].tolist() == [[i, k] for k in range(i % 3)] and r["points"].shape[1:] == (2,)
    assert r["grid"].tolist() == [[i, 1, 2]] * (1 + i % 2) and r["grid"].dtype == np.float32
    assert r["meta"] == {"a": i, "b": f"m{i}"}
    assert r["audio"] == b"RIFF" + bytes([i % 256]) * 8
    assert r["audio_meta"] == {"sampling_rate": 16000, "path": f"{i}.wav"}
    assert r["text"] == f"row {i}"


def test_hf_parquet_features_become_fields(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(
        hf_table(0, 30), tmp_path / "in" / "train-00000-of-00002.parquet", row_group_size=8
    )
    pq.write_table(hf_table(30, 12), tmp_path / "in" / "train-00001-of-00002.parquet")
    source = ParquetSource(str(tmp_path / "in"), shard_size=1 << 20)
    assert source.schema().to_dict() == {
        "image": "image",
        "label": "int64",
        "vec": "float32[3]",
        "ids": "int32[?]",
        "points": "int16[?,2]",
        "grid": "float32[?,3]",
        "meta": "json",
        "audio": "bytes",
        "audio_meta": "json",
        "text": "str",
    }
    assert source.classes() == {"label": CLASSES}
    assert source.features() == FEATURES
    got = fastload.convert(tmp_path / "in", tmp_path / "out", shard_size="16KB", progress=False)
    assert got.records == 42 and got.tasks > 1
    rows = read_all(tmp_path / "out")
    assert len(rows) == 42
    for i, r in enumerate(rows):
        check_row(r, i)


def test_images_stored_by_path_are_read_from_inside_the_source(tmp_path):
    src = tmp_path / "in"
    (src / "pics").mkdir(parents=True)
    (src / "pics" / "3.jpg").write_bytes(jpeg_bytes(3))
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(4))
    (src / "pics" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    paths = {
        3: "pics/3.jpg",
        4: "../secret.jpg",
        5: str(tmp_path / "secret.jpg"),
        6: "pics/link.jpg",
        7: "pics/missing.jpg",
        8: "s3://bucket/8.jpg",
    }
    pq.write_table(hf_table(0, 10, image_paths=paths), src / "data.parquet")
    got = fastload.convert(src, tmp_path / "out", skip_bad=True, progress=False, workers=1)
    assert got.records == 5 and got.skipped == 5
    kept = read_all(tmp_path / "out")
    assert [r["text"] for r in kept] == [f"row {i}" for i in (0, 1, 2, 3, 9)]
    check_row(kept[3], 3)  # read from pics/3.jpg
    reasons = "\n".join(got.skip_examples)
    assert "row 4: column 'image' has path '../secret.jpg', outside the source" in reasons
    assert "row 5: column 'image' has path" in reasons and "outside the source" in reasons
    assert "row 6: column 'image' has path 'pics/link.jpg', outside" in reasons  # a symlink out
    assert "row 7: column 'image' has path" in reasons and "cannot be read" in reasons
    assert "row 8: column 'image' has path 's3://bucket/8.jpg', outside" in reasons
    with pytest.raises(SourceRecordError, match="row 4: column 'image' has path '../secret.jpg'"):
        fastload.convert(src, tmp_path / "strict", progress=False, workers=1)


def test_a_missing_image_file_and_a_bad_label_are_named(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(hf_table(0, 5, image_paths={2: "gone.jpg"}), src / "a.parquet")
    with pytest.raises(
        SourceRecordError,
        match=r"a\.parquet: row 2: column 'image' has path .*gone\.jpg, which cannot be read",
    ):
        fastload.convert(src, tmp_path / "o1", progress=False, workers=1)
    t = hf_table(0, 5)
    t = t.set_column(1, "label", pa.array([0, 1, 3, -1, 2], pa.int64()))
    pq.write_table(t, src / "a.parquet")
    got = fastload.convert(src, tmp_path / "o2", progress=False, skip_bad=True, workers=1)
    assert (
        got.skipped == 1
        and "row 2: column 'label' holds label 3, not one of its 3 classes" in got.skip_examples[0]
    )
    assert [r["label"] for r in read_all(tmp_path / "o2")] == [0, 1, -1, 2]  # -1: no label


def test_an_array_of_the_wrong_shape_is_a_bad_record(tmp_path):
    t = hf_table(0, 4)
    grid = pa.array([[[0, 1, 2]], [[1, 1]], [[2, 1, 2]], None], pa.list_(pa.list_(pa.float32())))
    t = t.set_column(t.schema.get_field_index("grid"), "grid", grid)
    pq.write_table(t, tmp_path / "a.parquet")
    got = fastload.convert(tmp_path / "a.parquet", tmp_path / "out", progress=False, skip_bad=True)
    assert got.records == 2 and got.skipped == 2
    assert any(
        "row 1: column 'grid' has a list of another length than 3" in e for e in got.skip_examples
    )
    assert any("row 3: column 'grid' holds a null list" in e for e in got.skip_examples)


def plain_table(images: list[bytes]) -> pa.Table:
    return pa.table({"i": list(range(len(images))), "blob": pa.array(images, pa.large_binary())})


def test_binary_columns_of_images_are_found_by_sampling(tmp_path):
    mixed = [jpeg_bytes(0), png_bytes(1), webp_bytes(2)] * 7
    pq.write_table(plain_table(mixed), tmp_path / "images.parquet")
    source = ParquetSource(str(tmp_path / "images.parquet"), shard_size=1 << 20)
    assert source.schema()["blob"].spec == "image"
    assert source.features()["blob"] == {"_type": "Image"}
    not_all = [jpeg_bytes(0), b"not an image"] + [jpeg_bytes(i) for i in range(20)]
    pq.write_table(plain_table(not_all), tmp_path / "mixed.parquet")
    assert (
        ParquetSource(str(tmp_path / "mixed.parquet"), shard_size=1).schema()["blob"].spec
        == "bytes"
    )
    # image_columns decides instead: none, or exactly the ones named.
    none = ParquetSource(str(tmp_path / "images.parquet"), shard_size=1, image_columns=[])
    assert none.schema()["blob"].spec == "bytes"
    forced = fastload.convert(
        tmp_path / "mixed.parquet",
        tmp_path / "out",
        progress=False,
        image_columns="blob",
        skip_bad=True,
        workers=1,
    )
    assert (
        forced.skipped == 1
        and "row 1: column 'blob' is not a JPEG, PNG or WebP" in forced.skip_examples[0]
    )
    with pytest.raises(ConvertError, match=r"image columns \['nope'\] are not columns"):
        ParquetSource(str(tmp_path / "images.parquet"), shard_size=1, image_columns=["nope"])
    with pytest.raises(ConvertError, match="column 'i' has Arrow type int64; an image column"):
        ParquetSource(str(tmp_path / "images.parquet"), shard_size=1, image_columns=["i"])


def test_an_hf_image_column_left_out_of_image_columns_keeps_its_bytes(tmp_path):
    pq.write_table(hf_table(0, 3), tmp_path / "a.parquet")
    source = ParquetSource(str(tmp_path / "a.parquet"), shard_size=1, image_columns="")
    assert source.schema()["image"].spec == "bytes"
    fastload.convert(tmp_path / "a.parquet", tmp_path / "out", image_columns="", progress=False)
    assert read_all(tmp_path / "out")[1]["image"] == jpeg_bytes(1)


def test_struct_of_binary_is_refused_with_a_true_message(tmp_path):
    t = pa.table(
        {
            "x": pa.array(
                [{"payload": b"ab", "n": 1}],
                pa.struct([("payload", pa.binary()), ("n", pa.int32())]),
            )
        }
    )
    pq.write_table(t, tmp_path / "a.parquet")
    with pytest.raises(ConvertError, match="column 'x' has Arrow type struct<payload: binary") as e:
        ParquetSource(str(tmp_path / "a.parquet"), shard_size=1)
    assert "holding only numbers, bools and strings" in str(e.value)


# -- folders of splits and save_to_disk ---------------------------------------------------------
def test_a_folder_of_splits_needs_split(tmp_path):
    data = tmp_path / "repo" / "data"
    data.mkdir(parents=True)
    pq.write_table(hf_table(0, 10), data / "train-00000-of-00002.parquet")
    pq.write_table(hf_table(10, 10), data / "train-00001-of-00002.parquet")
    pq.write_table(hf_table(100, 4), data / "validation-00000-of-00001.parquet")
    pq.write_table(hf_table(200, 3), data / "test-00000-of-00001.parquet")
    with pytest.raises(
        ConvertError, match="holds the splits test, train, validation; choose one with --split"
    ):
        fastload.convert(tmp_path / "repo", tmp_path / "out", progress=False)
    train = fastload.convert(tmp_path / "repo", tmp_path / "train", split="train", progress=False)
    assert train.records == 20
    val = fastload.convert(tmp_path / "repo", tmp_path / "val", split="val", progress=False)
    assert [r["text"] for r in read_all(tmp_path / "val")] == [f"row {i}" for i in range(100, 104)]
    assert val.records == 4
    with pytest.raises(
        ConvertError, match="no files of split 'extra'; it holds the splits test, train"
    ):
        fastload.convert(tmp_path / "repo", tmp_path / "x", split="extra", progress=False)
    (tmp_path / "dirs" / "train").mkdir(parents=True)
    (tmp_path / "dirs" / "test").mkdir()
    pq.write_table(hf_table(0, 6), tmp_path / "dirs" / "train" / "0.parquet")
    pq.write_table(hf_table(50, 2), tmp_path / "dirs" / "test" / "0.parquet")
    test = fastload.convert(tmp_path / "dirs", tmp_path / "t", split="test", progress=False)
    assert test.records == 2


def hf_dataset(n: int, start: int = 0):
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=CLASSES),
            "vec": datasets.Sequence(datasets.Value("float32"), length=3),
            "grid": datasets.Array2D((2, 3), "int32"),
            "meta": {"a": datasets.Value("int32"), "b": datasets.Value("string")},
        }
    )
    idx = range(start, start + n)
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": jpeg_bytes(i), "path": None} for i in idx],
            "label": [i % 3 for i in idx],
            "vec": [[i, 0, 1] for i in idx],
            "grid": [[[i, 0, 0], [0, i, 0]] for i in idx],
            "meta": [{"a": i, "b": str(i)} for i in idx],
        },
        features=features,
    )


def check_hf_row(r: dict, i: int) -> None:
    assert r["image"].data == jpeg_bytes(i) and r["label"] == i % 3
    assert r["vec"].tolist() == [i, 0, 1]
    assert r["grid"].tolist() == [[i, 0, 0], [0, i, 0]] and r["grid"].dtype == np.int32
    assert r["meta"] == {"a": i, "b": str(i)}


@pytest.mark.parametrize("workers", [1, 2])  # 1: this process, where datasets is imported
def test_a_save_to_disk_folder(tmp_path, workers):
    hf_dataset(25).save_to_disk(str(tmp_path / "saved"), num_shards=3)
    assert len(list((tmp_path / "saved").glob("*.arrow"))) > 1
    got = fastload.convert(tmp_path / "saved", tmp_path / "out", workers=workers, progress=False)
    assert got.source == "parquet" and got.records == 25
    rows = read_all(tmp_path / "out")
    for i, r in enumerate(rows):
        check_hf_row(r, i)
    source = ParquetSource(str(tmp_path / "saved"), shard_size=1)
    assert source.schema()["grid"].spec == "int32[2,3]"
    assert source.classes() == {"label": CLASSES}
    assert source.features()["label"] == {"names": CLASSES, "_type": "ClassLabel"}


def test_a_dataset_dict_folder_and_its_splits(tmp_path):
    dd = datasets.DatasetDict({"train": hf_dataset(12), "validation": hf_dataset(5, start=50)})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(
        ConvertError, match="a datasets.DatasetDict of the splits train, validation"
    ):
        fastload.convert(tmp_path / "dd", tmp_path / "x", progress=False)
    got = fastload.convert(tmp_path / "dd", tmp_path / "val", split="dev", progress=False)
    assert got.records == 5
    for k, r in enumerate(read_all(tmp_path / "val")):
        check_hf_row(r, 50 + k)


def test_parquet_written_by_datasets(tmp_path):
    hf_dataset(9).to_parquet(str(tmp_path / "train.parquet"))
    fastload.convert(tmp_path / "train.parquet", tmp_path / "out", progress=False)
    for i, r in enumerate(read_all(tmp_path / "out")):
        check_hf_row(r, i)


def test_cli_split_and_image_columns(tmp_path):
    dd = datasets.DatasetDict({"train": hf_dataset(4), "test": hf_dataset(3, start=9)})
    dd.save_to_disk(str(tmp_path / "dd"))
    done = subprocess.run(
        [
            *cli_command(),
            "convert",
            tmp_path / "dd",
            tmp_path / "out",
            "--split",
            "test",
            "--image-columns",
            "",
            "--no-progress",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["records"] == 3
    ds = fastload.Dataset(tmp_path / "out")
    assert ds.schema["image"].spec == "bytes" and ds[0]["image"] == jpeg_bytes(9)
    assert "split 'test'" in done.stderr and "3 classes: 0=cat, 1=dog, 2=eel" in done.stderr
