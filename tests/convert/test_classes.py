"""Class names and the source's column types are kept: ImageFolder classes and ClassLabel
names in the manifest (covered by its checksum), ``Dataset.classes`` / ``class_to_idx`` /
``features`` as torchvision's ImageFolder names them, and ``fastload inspect`` shows them."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fastload
from fastload.errors import ManifestError
from fastload.format.manifest import Manifest

from .conftest import cli_command, make_imagefolder
from .test_hf import CLASSES, FEATURES, hf_table

pytestmark = pytest.mark.timeout(120)

GOLDEN_V1 = Path(__file__).resolve().parent.parent / "format" / "data" / "v1"


def test_image_folder_classes_as_torchvision_names_them(tmp_path):
    make_imagefolder(tmp_path / "in", n=9, classes=("cat", "dog", "eel"))
    fastload.convert(tmp_path / "in", tmp_path / "out", progress=False)
    ds = fastload.Dataset(tmp_path / "out")
    assert ds.classes == ["cat", "dog", "eel"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "eel": 2}
    assert [ds.classes[r["label"]] for r in ds] == [r["filename"].split("/")[0] for r in ds]
    assert ds.features == {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": ["cat", "dog", "eel"]},
        "filename": {"_type": "Value", "dtype": "string"},
    }


def test_classlabel_names_and_hf_features_are_kept(tmp_path):
    pq.write_table(hf_table(0, 6), tmp_path / "a.parquet")
    fastload.convert(tmp_path / "a.parquet", tmp_path / "out", progress=False)
    ds = fastload.Dataset(tmp_path / "out")
    assert ds.classes == CLASSES and ds.class_to_idx["eel"] == 2
    assert ds.features == FEATURES
    assert ds.manifest.classes == {"label": CLASSES}


def test_sources_without_names_have_none(tmp_path):
    pq.write_table(pa.table({"x": [1, 2], "s": ["a", "b"]}), tmp_path / "t.parquet")
    fastload.convert(tmp_path / "t.parquet", tmp_path / "pq", progress=False)
    ds = fastload.Dataset(tmp_path / "pq")
    assert ds.classes is None and ds.class_to_idx is None
    assert ds.features == {"x": {"arrow": "int64"}, "s": {"arrow": "string"}}
    (tmp_path / "a.jsonl").write_text('{"i": 1}\n')
    fastload.convert(tmp_path / "a.jsonl", tmp_path / "js", progress=False)
    js = fastload.Dataset(tmp_path / "js")
    assert js.classes is None and js.features is None
    assert "classes" not in json.loads((tmp_path / "js" / "manifest.json").read_text())


def test_a_version_1_dataset_reads_with_no_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # version 1 manifests warn: no checksum
        ds = fastload.Dataset(GOLDEN_V1)
    assert ds.manifest.version == 1 and ds.classes is None and ds.features is None


def test_a_flipped_class_name_is_detected(tmp_path):
    make_imagefolder(tmp_path / "in", n=6)
    fastload.convert(tmp_path / "in", tmp_path / "out", progress=False)
    manifest = tmp_path / "out" / "manifest.json"
    text = manifest.read_text()
    assert text.count('"dog"') == 2  # in classes and in features
    manifest.write_text(text.replace('"dog"', '"dgo"', 1))
    with pytest.raises(ManifestError, match="does not match its checksum"):
        fastload.Dataset(tmp_path / "out")


def test_manifest_classes_must_name_fields_and_hold_strings(tmp_path):
    schema = fastload.Schema({"label": "int64"})
    for classes, match in [
        ({"nope": ["a"]}, "'nope', which is not a field"),
        ({"label": ["a", 3]}, "must be a list of strings"),
        (["a"], "must be an object"),
    ]:
        data = Manifest(schema, (), {}, classes=classes).to_bytes()  # a valid checksum
        with pytest.raises(ManifestError, match=match):
            Manifest.from_bytes(data, "m.json")


def test_writer_takes_classes_and_features(tmp_path):
    with fastload.Writer(
        tmp_path / "w", {"label": "int8"}, classes={"label": ("no", "yes")}, features={"x": 1}
    ) as w:
        w.write({"label": 1})
    ds = fastload.Dataset(tmp_path / "w")
    assert ds.classes == ["no", "yes"] and ds.features == {"x": 1}
    with pytest.raises(ValueError, match="'y' is not a field"):
        fastload.Writer(tmp_path / "v", {"label": "int8"}, classes={"y": ["a"]})


def test_inspect_shows_classes_and_source_types(tmp_path):
    pq.write_table(hf_table(0, 3), tmp_path / "a.parquet")
    fastload.convert(tmp_path / "a.parquet", tmp_path / "out", progress=False)
    text = subprocess.run(
        [*cli_command(), "inspect", tmp_path / "out"], capture_output=True, text=True, timeout=60
    )
    assert text.returncode == 0, text.stderr
    assert "classes      label: 0=cat, 1=dog, 2=eel" in text.stdout
    assert "(source: ClassLabel)" in text.stdout and "(source: Array2D)" in text.stdout
    js = subprocess.run(
        [*cli_command(), "inspect", tmp_path / "out", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    info = json.loads(js.stdout)
    assert info["classes"] == {"label": CLASSES} and info["features"] == FEATURES
