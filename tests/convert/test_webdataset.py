"""The webdataset source: grouping by key, field types, unsafe members, broken grouping."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from fastload import ConvertError, SourceRecordError
from fastload.convert import convert
from fastload.convert.webdataset import WebDatasetSource, expand_braces

from .conftest import dir_bytes, files_outside, jpeg_bytes, read_all


def sample(i: int) -> dict[str, bytes]:
    return {
        "jpg": jpeg_bytes(i),
        "cls": str(i % 10).encode(),
        "json": json.dumps({"i": i}).encode(),
        "txt": f"caption {i}".encode(),
        "seg.bin": bytes([i % 256]) * 3,
    }


def add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def add_special(tf: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    tf.addfile(info)


def write_tar(path, keys, *, extra=None) -> None:
    """Samples ``keys`` in order; ``extra(tf, i)`` may add members after sample i."""
    with tarfile.open(path, "w") as tf:
        for i in keys:
            for ext, data in sample(i).items():
                add_file(tf, f"dir/{i:05d}.{ext}", data)
            if extra:
                extra(tf, i)


def check(records, keys) -> None:
    assert [r["key"] for r in records] == [f"dir/{i:05d}" for i in keys]
    for r, i in zip(records, keys):
        s = sample(i)
        assert r["jpg"].data == s["jpg"] and r["cls"] == i % 10 and r["json"] == {"i": i}
        assert r["txt"] == f"caption {i}" and r["seg.bin"] == s["seg.bin"]


def test_round_trip_over_several_tars(tmp_path):
    (tmp_path / "in").mkdir()
    for k in range(3):
        write_tar(tmp_path / "in" / f"shard-{k:03d}.tar", range(k * 5, k * 5 + 5))
    source = WebDatasetSource(str(tmp_path / "in"), shard_size=1 << 20)
    assert source.schema().to_dict() == {
        "key": "str",
        "cls": "int64",
        "jpg": "image",
        "json": "json",
        "seg.bin": "bytes",
        "txt": "str",
    }
    result = convert(tmp_path / "in" / "shard-{000..002}.tar", tmp_path / "out", progress=False)
    assert result.records == 15 and result.tasks == 3
    check(read_all(tmp_path / "out"), range(15))


def test_workers_give_identical_output(tmp_path):
    (tmp_path / "in").mkdir()
    for k in range(4):
        write_tar(tmp_path / "in" / f"{k}.tar", range(k * 3, k * 3 + 3))
    for w in (1, 2):
        convert(tmp_path / "in", tmp_path / f"o{w}", workers=w, progress=False)
    assert dir_bytes(tmp_path / "o1") == dir_bytes(tmp_path / "o2")


def test_gzipped_tar(tmp_path):
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:
        for i in range(3):
            for ext, data in sample(i).items():
                add_file(tf, f"dir/{i:05d}.{ext}", data)
    convert(tmp_path / "a.tar.gz", tmp_path / "out", progress=False)
    check(read_all(tmp_path / "out"), range(3))


@pytest.mark.parametrize(
    "name, kind, link, why",
    [
        ("../evil.txt", tarfile.REGTYPE, "", "has '..' in its path"),
        ("dir/../../evil.txt", tarfile.REGTYPE, "", "has '..' in its path"),
        ("/etc/evil.txt", tarfile.REGTYPE, "", "has an absolute path"),
        ("dir/00001.lnk", tarfile.SYMTYPE, "/etc/passwd", "is a link"),
        ("dir/00001.hard", tarfile.LNKTYPE, "dir/00000.txt", "is a link"),
        ("dir/00001.dev", tarfile.CHRTYPE, "", "is a device, fifo"),
        ("dir/00001.fifo", tarfile.FIFOTYPE, "", "is a device, fifo"),
    ],
)
def test_unsafe_members_are_rejected_and_nothing_is_written_outside(
    tmp_path, name, kind, link, why
):
    def extra(tf, i):
        if i == 1:
            if kind == tarfile.REGTYPE:
                add_file(tf, name, b"pwned")
            else:
                add_special(tf, name, kind, link)

    write_tar(tmp_path / "t.tar", range(4), extra=extra)
    before = files_outside(tmp_path, tmp_path / "out")
    with pytest.raises(SourceRecordError, match=rf"t.tar: .*member '{name}' {why}"):
        convert(tmp_path / "t.tar", tmp_path / "out", progress=False)
    result = convert(tmp_path / "t.tar", tmp_path / "out", progress=False, skip_bad=True)
    assert result.skipped == 1
    records = read_all(tmp_path / "out")
    # A member of sample 1's key taints sample 1; any other stands alone.
    assert [r["key"] for r in records] in (
        [f"dir/{i:05d}" for i in (0, 2, 3)],
        [f"dir/{i:05d}" for i in range(4)],
    )
    assert files_outside(tmp_path, tmp_path / "out") == before
    assert not (tmp_path.parent / "evil.txt").exists()


def test_duplicate_extension_is_an_error(tmp_path):
    write_tar(
        tmp_path / "t.tar",
        range(3),
        extra=lambda tf, i: add_file(tf, "dir/00001.txt", b"again") if i == 1 else None,
    )
    with pytest.raises(
        SourceRecordError, match="sample 'dir/00001': has two members with extension 'txt'"
    ):
        convert(tmp_path / "t.tar", tmp_path / "out", progress=False)


def test_interleaved_keys_are_an_error(tmp_path):
    write_tar(
        tmp_path / "t.tar",
        range(3),
        extra=lambda tf, i: add_file(tf, "dir/00000.more", b"late") if i == 1 else None,
    )
    with pytest.raises(SourceRecordError, match="sample 'dir/00000': its key appears again"):
        convert(tmp_path / "t.tar", tmp_path / "out", progress=False)
    result = convert(tmp_path / "t.tar", tmp_path / "out", progress=False, skip_bad=True)
    assert result.skipped == 1 and result.records == 3  # the stray member is the bad record


def test_missing_field_and_bad_values_are_bad_records(tmp_path):
    with tarfile.open(tmp_path / "t.tar", "w") as tf:
        for i in range(4):
            s = sample(i)
            if i == 1:
                del s["txt"]
            if i == 2:
                s["cls"] = b"seven"
            if i == 3:
                s["jpg"] = s["jpg"][:-30]
            for ext, data in s.items():
                add_file(tf, f"dir/{i:05d}.{ext}", data)
    with pytest.raises(SourceRecordError, match=r"'dir/00001': has extensions .* missing \['tx"):
        convert(tmp_path / "t.tar", tmp_path / "out", progress=False)
    result = convert(tmp_path / "t.tar", tmp_path / "out", progress=False, skip_bad=True)
    assert result.skipped == 3 and result.records == 1
    assert any("member .cls is not an integer" in e for e in result.skip_examples)
    assert any("member .jpg: truncated JPEG" in e for e in result.skip_examples)


def test_truncated_tar_is_a_bad_record(tmp_path):
    write_tar(tmp_path / "t.tar", range(5))
    data = (tmp_path / "t.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceRecordError, match="t.tar: unreadable after member"):
        convert(tmp_path / "t.tar", tmp_path / "out", progress=False)


def test_key_extension_clash(tmp_path):
    with tarfile.open(tmp_path / "t.tar", "w") as tf:
        add_file(tf, "a.key", b"x")
    with pytest.raises(ConvertError, match="clashes with the key field"):
        convert(tmp_path / "t.tar", tmp_path / "out", progress=False)


def test_expand_braces():
    assert expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_brace_pattern_with_missing_files(tmp_path):
    write_tar(tmp_path / "s-0.tar", range(1))
    with pytest.raises(ConvertError, match="1 of 2 files do not exist"):
        convert(str(tmp_path / "s-{0..1}.tar"), tmp_path / "out", progress=False)
