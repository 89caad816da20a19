"""The manifest's checksum (format version 2): it covers every member of the manifest, known or
not, survives re-indenting, and turns any damage into a ManifestError naming the manifest --
down to every single-bit flip of a small manifest (docs/reliability.md A22)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import fastload
from fastload import FastloadError, ManifestError
from fastload.cli import main
from fastload.format.manifest import Manifest

from .formattools import assert_record, manifest_checksum, write_manifest

SCHEMA = {"x": "uint16[64]", "i": "int32", "s": "str"}
N = 6


def record(i: int) -> dict:
    return {"x": np.arange(64, dtype=np.uint16) * 3 + i, "i": i - 2, "s": "é" * (i % 3)}


ORIGINALS = [record(i) for i in range(N)]


@pytest.fixture(scope="module")
def small_path(tmp_path_factory) -> Path:
    """Two shards of three records: a small manifest (~600 bytes) with every kind of member."""
    path = tmp_path_factory.mktemp("manifest") / "ds"
    with fastload.Writer(path, SCHEMA, shard_size=300, block_size=256, compression="zstd") as w:
        for rec in ORIGINALS:
            w.write(rec)
    return path


@pytest.fixture
def ds_copy(small_path, tmp_path) -> Path:
    return Path(shutil.copytree(small_path, tmp_path / "ds"))


def manifest_of(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_written_manifest_carries_the_documented_checksum(small_path):
    m = manifest_of(small_path)
    assert m["version"] == 3 and len(m["shards"]) == 2
    assert m["checksum"] == manifest_checksum(m)  # computed independently of fastload
    with fastload.Dataset(small_path) as ds:
        assert ds.manifest.to_json() == m
        for i in range(N):
            assert_record(ds[i], ORIGINALS[i], i)


def test_reindented_and_reordered_manifest_still_reads(ds_copy):
    """The checksum is over the content, not the bytes: JSON tools may re-save the file."""
    m = manifest_of(ds_copy)
    text = json.dumps(dict(reversed(list(m.items()))), indent=4, ensure_ascii=True)
    (ds_copy / "manifest.json").write_text(text)
    with fastload.Dataset(ds_copy) as ds:
        assert_record(ds[N - 1], ORIGINALS[N - 1])


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["schema"][0].update(type="uint16[60]"),  # the silent corruption once found
        lambda m: m["schema"][0].update(name="y"),
        lambda m: m["options"].update(level=4),  # informational, but content all the same
        lambda m: m["shards"][0].update(records=m["shards"][0]["records"] - 1),
        lambda m: m.update(classes=["cat", "dog"]),  # a member this reader does not know
        lambda m: m["shards"][1].update(note="x"),
        lambda m: m.pop("bytes"),
    ],
)
def test_any_edit_without_a_new_checksum_is_refused(ds_copy, edit):
    m = manifest_of(ds_copy)
    edit(m)
    write_manifest(ds_copy, m, seal=False)
    where = str(ds_copy / "manifest.json")
    with pytest.raises(ManifestError, match="does not match its checksum") as e:
        fastload.Dataset(ds_copy)
    assert str(e.value).startswith(where) and m["checksum"] in str(e.value)
    assert main(["verify", str(ds_copy), "--no-progress"]) == 1


def test_members_added_later_are_covered_once_sealed(ds_copy):
    """A newer writer's members (the class names of a labelled dataset, say) are checksummed
    like the rest: sealed, they read; changed afterwards, they are refused."""
    m = manifest_of(ds_copy)
    m["classes"] = {"i": ["cat", "dog"]}
    write_manifest(ds_copy, m)
    with fastload.Dataset(ds_copy) as ds:
        assert len(ds) == N
    m["classes"] = {"i": ["cat", "dgo"]}
    write_manifest(ds_copy, m, seal=False)
    with pytest.raises(ManifestError, match="does not match its checksum"):
        fastload.Dataset(ds_copy)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.pop("checksum"), 'no "checksum" member, which format version 3'),
        (lambda m: m.update(checksum="xxh64:1234"), "checksum 'xxh64:1234' must look like"),
        (lambda m: m.update(checksum=7), "checksum 7 must look like"),
        (lambda m: m.update(version=4), r"version 4 is not supported.*\[1, 2, 3\].*damaged"),
        (lambda m: m.update(version=True), "version True is not supported"),
        (lambda m: m.update(version=2.0), "version 2.0 is not supported"),
    ],
)
def test_missing_or_malformed_checksum_and_version(ds_copy, edit, match):
    m = manifest_of(ds_copy)
    edit(m)
    write_manifest(ds_copy, m, seal=False)
    with pytest.raises(ManifestError, match=match) as e:
        fastload.Dataset(ds_copy)
    assert str(e.value).startswith(str(ds_copy / "manifest.json"))


def test_a_newer_version_with_a_valid_checksum_asks_for_an_upgrade(ds_copy):
    m = manifest_of(ds_copy)
    m["version"] = 4
    write_manifest(ds_copy, m)
    with pytest.raises(ManifestError, match="upgrade fastload to read it$"):
        fastload.Dataset(ds_copy)


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"format": "fastload", "version": 2, "version": 2}', "a key appears twice in one object"),
        ('{"format": "fastload", "version": NaN}', "NaN is not a JSON number"),
        ('{"format": "fastload", "version": 2, "records": 1e999}', "checksum"),
        ('{"format": "fastload", "version": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
)
def test_json_that_python_reads_loosely_is_refused(ds_copy, text, match):
    """Repeated keys, NaN, a float that overflows, an integer of 5,000 digits: each a
    ManifestError naming the manifest, never another exception."""
    (ds_copy / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=match) as e:
        fastload.Dataset(ds_copy)
    assert str(e.value).startswith(str(ds_copy / "manifest.json"))


def test_merged_parts_carry_a_checksum(tmp_path):
    for part in range(2):
        with fastload.Writer(tmp_path / "ds", SCHEMA, part=part) as w:
            w.write(record(part))
    manifest = fastload.writer.merge_parts(tmp_path / "ds", 2)
    m = manifest_of(tmp_path / "ds")
    assert m["checksum"] == manifest_checksum(m) == manifest.to_json()["checksum"]


# --------------------------------------------------------------------------- every bit


def read_everything(root: Path) -> None:
    """Open the dataset and check that it holds exactly the original records."""
    with fastload.Dataset(root) as ds:
        assert len(ds) == N
        for i in range(N):
            assert_record(ds[i], ORIGINALS[i], i)
        order = [N - 1, 0, 3, 3, 1]
        batch = ds.get_batch(order)
        assert batch["x"].tolist() == [ORIGINALS[i]["x"].tolist() for i in order]
        assert batch["i"].tolist() == [ORIGINALS[i]["i"] for i in order]
        assert batch["s"] == [ORIGINALS[i]["s"] for i in order]
        assert ds.schema.to_dict() == SCHEMA


def parsed(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return "unparsable"


def verify_exit(root: Path) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(["verify", str(root), "--no-progress"])


@pytest.mark.slow  # every one of ~5,000 flips read and verified
def test_every_bit_flip_of_the_manifest_is_an_error_or_changes_nothing(ds_copy):
    """Flip each bit of manifest.json in turn; opening and reading everything must either raise
    a FastloadError that names the manifest or give exactly the original records, and
    `fastload verify` must exit 1 for every flip that changes the manifest's content."""
    path = ds_copy / "manifest.json"
    original = path.read_bytes()
    assert 400 < len(original) < 1000
    outcomes: dict[str, int] = {}
    for pos in range(len(original)):
        for bit in range(8):
            bad = bytearray(original)
            bad[pos] ^= 1 << bit
            path.write_bytes(bytes(bad))
            where = f"bit {bit} of byte {pos} ({chr(original[pos])!r})"
            try:
                read_everything(ds_copy)
                outcome = "same records"
            except FastloadError as e:
                assert str(e).startswith(str(path)), (where, str(e))
                outcome = type(e).__name__
            except Exception as e:  # anything else fails the test, saying which flip
                pytest.fail(f"{where}: {type(e).__name__}: {e}")
            changed = parsed(bytes(bad)) != parsed(original)
            rc = verify_exit(ds_copy)
            assert rc == (1 if changed else 0), (where, rc, outcome)
            assert changed == (outcome != "same records"), (where, outcome)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    path.write_bytes(original)
    read_everything(ds_copy)
    assert sum(outcomes.values()) == 8 * len(original)
    print(f"{8 * len(original)} flips: {outcomes}")


def test_manifest_round_trips_through_from_bytes(small_path):
    data = (small_path / "manifest.json").read_bytes()
    m = Manifest.from_bytes(data, "m.json")
    assert m.to_bytes() == data and m.version == 3
