"""Where a dataset's shards may be (docs/reliability.md F8, F9): manifest paths with control
characters are a ManifestError naming the entry; a shard that is a symbolic link out of the
dataset is refused unless follow_symlinks=True; whatever file a link leads to, no error quotes
its bytes; a FIFO or a directory in a shard's place is an error, never a hang."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

import fastload
from fastload import FastloadError, ManifestError, ShardFormatError
from fastload.cli import main
from fastload.verify import verify_dataset

from .formattools import write_manifest

N = 8
# A private key's look: high-entropy text, so no 8 characters of it occur in a message by chance
SECRET = base64.b64encode(hashlib.sha256(b"not a shard").digest() * 4)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paths") / "ds"
    with fastload.Writer(root, {"i": "int64", "s": "str"}, shard_size=100) as w:
        for i in range(N):
            w.write({"i": i, "s": f"record {i}"})
    return root


@pytest.fixture
def ds(source, tmp_path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "ds"))


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "path, shown",
    [
        ("shard-\x0000.fls", r"\x00"),
        ("shard-00000.fls\n", r"\n"),
        ("sub\x1b[2J/shard.fls", r"\x1b"),
        ("shard-\x7f.fls", r"\x7f"),
        ("shard-\x85.fls", r"\x85"),  # a C1 control
        ("shard-\ud800.fls", r"\ud800"),  # a lone surrogate
        ("a" * 256 + ".fls", "longer than 255 bytes"),
    ],
)
def test_control_characters_in_a_shard_path_are_a_manifest_error(ds, path, shown):
    m = manifest(ds)
    m["shards"][1]["path"] = path
    write_manifest(ds, m)  # resealed: the path itself must be refused
    where = str(ds / "manifest.json")
    with pytest.raises(ManifestError) as e:
        fastload.Dataset(ds)
    msg = str(e.value)
    assert msg.startswith(f"{where}: shard entry 1: path ") and shown in msg
    for command in ("inspect", "verify"):
        rc, _, err = run(command, str(ds))
        assert rc == 1 and err.startswith(f"fastload {command}: error: {where}: shard entry 1")
        assert "Traceback" not in err


def link_shard(root: Path, s: int, target: Path) -> Path:
    shard = root / manifest(root)["shards"][s]["path"]
    shard.unlink()
    shard.symlink_to(target)
    return shard


def test_a_link_out_of_the_dataset_is_refused_unless_followed(ds, source, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    real = outside / "shard.fls"
    shutil.copy(source / manifest(source)["shards"][0]["path"], real)
    shard = link_shard(ds, 0, real)
    with fastload.Dataset(ds) as d:
        with pytest.raises(ShardFormatError) as e:
            d[0]
        assert d[N - 1]["i"] == N - 1  # the other shards read
    msg = str(e.value)
    assert msg.startswith(f"{shard}: is a symbolic link to {real}, outside the dataset")
    assert "follow_symlinks=True" in msg
    report = verify_dataset(str(ds))
    assert not report.ok and report.problems[0] == msg
    with fastload.Dataset(ds, follow_symlinks=True) as d:
        assert [d[i]["i"] for i in range(N)] == list(range(N))
    assert verify_dataset(str(ds), follow_symlinks=True).ok
    assert run("verify", "--no-progress", str(ds))[0] == 1
    assert run("verify", "--no-progress", "--follow-symlinks", str(ds))[0] == 0
    assert run("inspect", "--follow-symlinks", str(ds))[0] == 0


def test_links_within_the_dataset_and_a_linked_dataset_directory_read(ds, tmp_path):
    """Only where a link leads counts: inside the dataset (or a dataset reached through a
    link to its directory) is fine."""
    m = manifest(ds)
    (ds / "store").mkdir()
    for entry in m["shards"]:
        (ds / entry["path"]).rename(ds / "store" / entry["path"])
        (ds / entry["path"]).symlink_to(Path("store") / entry["path"])
    alias = tmp_path / "alias"
    alias.symlink_to(ds)
    for root in (ds, alias):
        with fastload.Dataset(root) as d:
            assert [d[i]["i"] for i in range(N)] == list(range(N))


@pytest.mark.parametrize("follow", [False, True])
def test_no_error_quotes_a_file_that_is_not_a_shard(ds, tmp_path, follow):
    """A link to a private key: refused, or (followed) found not to be a shard -- and no
    message, from reads, verify or the CLI, holds a byte of it."""
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(SECRET)
    link_shard(ds, 0, secret)
    messages = []
    with fastload.Dataset(ds, follow_symlinks=follow) as d:
        for read in (lambda: d[0], lambda: d.get_batch([0, 1])):
            with pytest.raises(ShardFormatError) as e:
                read()
            messages.append(str(e.value))
    messages += verify_dataset(str(ds), follow_symlinks=follow).problems
    flags = ["--follow-symlinks"] if follow else []
    for argv in (["verify", "--no-progress", *flags], ["verify", "--deep", "--no-progress"]):
        rc, out, err = run(*argv, str(ds))
        assert rc == 1
        messages += [out, err]
    assert any("not a fastload shard" in m or "symbolic link" in m for m in messages)
    for m in messages:
        for k in range(len(SECRET) - 8):
            assert SECRET[k : k + 8].decode() not in m, (SECRET[k : k + 8], m)


@pytest.mark.timeout(20)
def test_a_fifo_or_a_directory_in_a_shards_place_is_an_error_not_a_hang(ds):
    shard = ds / manifest(ds)["shards"][0]["path"]
    for make in (lambda p: os.mkfifo(p), lambda p: p.mkdir()):
        shard.unlink() if not shard.is_dir() else shard.rmdir()
        make(shard)
        with fastload.Dataset(ds) as d:
            with pytest.raises(FastloadError, match="is not a regular file"):
                d[0]


@pytest.mark.parametrize(
    "content",
    [SECRET, b"\x8f" + SECRET, b'{"k": "' + SECRET + b'", "k": 1}'],
    ids=["text", "binary", "json"],
)
def test_no_manifest_error_quotes_what_the_manifest_file_holds(ds, tmp_path, content):
    """A manifest that is a link to some other file: the error names the manifest, and says
    what is wrong, without its text."""
    secret = tmp_path / "elsewhere.json"
    secret.write_bytes(content)
    (ds / "manifest.json").unlink()
    (ds / "manifest.json").symlink_to(secret)
    with pytest.raises(ManifestError) as e:
        fastload.Dataset(ds)
    msg = str(e.value)
    assert msg.startswith(str(ds / "manifest.json"))
    for k in range(len(SECRET) - 8):
        assert SECRET[k : k + 8].decode() not in msg, msg


def test_shard_real_paths_resolve_as_realpath_does(tmp_path):
    """The check resolves a dataset directory once (while the path leads to the same
    directory) and, for a plain file directly in it, only the file's name after: it must
    agree with os.path.realpath for plain files, links to files, files in a linked
    directory, paths through '..', and a dataset path re-pointed to another directory."""
    from fastload.io.source import _real_path, _real_root

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "g").write_bytes(b"y")
    (tmp_path / "d" / "link").symlink_to(tmp_path / "out" / "g")
    (tmp_path / "d" / "sub").symlink_to(tmp_path / "out")
    (tmp_path / "alias").symlink_to(tmp_path / "d")
    for root in (tmp_path / "d", tmp_path / "alias"):
        for p in (
            root / "f",
            root / "link",
            root / "sub" / "g",
            root / ".." / "out" / "g",
            root / "sub" / ".." / "d" / "f",
            root / "missing",
        ):
            assert _real_path(str(p), str(root), _real_root(str(root))) == os.path.realpath(p), p
    assert _real_root(str(tmp_path / "alias")) == str((tmp_path / "d").resolve())
    (tmp_path / "alias").unlink()  # the same path, now to another directory: resolved anew
    (tmp_path / "alias").symlink_to(tmp_path / "out")
    assert _real_root(str(tmp_path / "alias")) == str((tmp_path / "out").resolve())
    assert _real_path(
        str(tmp_path / "alias" / "g"), str(tmp_path / "alias"), str(tmp_path / "out")
    ) == str((tmp_path / "out" / "g").resolve())
