"""WebDataset tar shards: members grouped into samples by key, one field per extension.

Input is a tar file, a directory of them, a glob, or a brace pattern such as
``shards-{000..009}.tar``, local or at any fsspec URL (``gs://bucket/shards-{000..099}.tar``;
a remote tar is streamed in large ranged GETs).
As in WebDataset, a member's key is its path up to the first '.' of its base name, and the rest
(lower-cased) is its extension: ``a/0001.seg.png`` is key ``a/0001``, extension ``seg.png``.

The schema is ``key`` (str) plus one field per extension of the first sample, typed by the last
part of the extension: jpg/jpeg/png/webp -> image, cls/cls2/index -> int64 (from text), json ->
json, txt/text -> str, anything else -> bytes. One task per tar file.

Tars are untrusted input: members are read into memory in stream order and their names are
never used as paths on disk. A member with an absolute path or '..' in it, a link, a device or a
fifo is a bad record, and so are a sample with two members of one extension, a key that comes
back after other keys (interleaved samples) and a sample whose fields differ from the schema.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConvertError, SourceRecordError
from ..format.schema import Schema
from ..io.inputs import Inputs, expand_braces
from .base import Consumed, ReadItem, Source, Task, as_inputs, check_field_name, list_files
from .images import image_problem

__all__ = ["WebDatasetSource", "TarTask", "tar_samples", "expand_braces", "SUFFIXES"]

SUFFIXES = (".tar", ".tar.gz", ".tgz")
_IMAGE_EXTS = {"jpg", "jpeg", "png", "webp"}
_INT_EXTS = {"cls", "cls2", "index"}
_TEXT_EXTS = {"txt", "text"}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_INTERLEAVED = (
    "its key appears again after other keys (interleaved samples); group each "
    "sample's members together"
)


@dataclass(frozen=True)
class TarTask(Task):
    path: str  # input_bytes is the tar's size

    def describe(self) -> str:
        return self.path


@dataclass
class _Sample:
    key: str
    members: dict[str, bytes]  # extension -> bytes
    first_member: str
    problem: str | None = None


class WebDatasetSource(Source[TarTask]):
    """WebDataset tars; see the module docstring."""

    name = "webdataset"

    def __init__(
        self, src: str | os.PathLike | Inputs, *, shard_size: int, decode_check: bool = False
    ) -> None:
        self.inputs = as_inputs(src)
        self._sizes = {f.path: f.size for f in tar_files(self.inputs)}
        self.files = list(self._sizes)
        self.decode_check = decode_check
        self.exts = _first_sample_exts(self.files, self._open)
        self._schema = Schema({"key": "str", **{e: _ext_type(e) for e in self.exts}})

    def schema(self) -> Schema:
        return self._schema

    def tasks(self) -> list[TarTask]:
        return [TarTask(self._sizes[p], p) for p in self.files]

    def _open(self, path: str):
        return self.inputs.open(path, size=self._sizes[path])

    def read(self, task: TarTask) -> Iterator[ReadItem]:
        with self._open(task.path) as raw:
            reported = 0
            for item in self._read(task, raw):
                yield item
                if raw.tell() > reported:  # bytes of the tar (compressed or not) read
                    yield Consumed(raw.tell() - reported)
                    reported = raw.tell()

    def _read(self, task: TarTask, raw) -> Iterator[ReadItem]:
        for sample in tar_samples(task.path, raw):
            if isinstance(sample, SourceRecordError):
                yield sample
                continue
            where = f"{task.path}: sample {sample.key!r}"
            if sample.problem:
                yield SourceRecordError(f"{where}: {sample.problem}")
                continue
            try:
                yield self._record(sample)
            except ValueError as e:
                yield SourceRecordError(f"{where}: {e}")

    def _record(self, sample: _Sample) -> dict[str, Any]:
        if sample.members.keys() != set(self.exts):
            missing = sorted(set(self.exts) - sample.members.keys())
            extra = sorted(sample.members.keys() - set(self.exts))
            raise ValueError(
                f"has extensions {sorted(sample.members)}, the schema (from the "
                f"first sample) has {self.exts}: missing {missing}, "
                f"extra {extra}"
            )
        record: dict[str, Any] = {"key": sample.key}
        for ext, data in sample.members.items():
            record[ext] = self._value(ext, data)
        return record

    def _value(self, ext: str, data: bytes) -> Any:
        """A member's bytes as its field's value; ValueError says why they do not fit."""
        kind = ext.rsplit(".", 1)[-1]
        if kind in _IMAGE_EXTS:
            problem = image_problem(data, decode=self.decode_check)
            if problem:
                raise ValueError(f"member .{ext}: {problem}")
            return data
        if kind in _INT_EXTS:
            try:
                value = int(data.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                raise ValueError(f"member .{ext} is not an integer: {data[:40]!r}") from None
            if not _INT64[0] <= value <= _INT64[1]:
                raise ValueError(f"member .{ext}: {value} does not fit in int64")
            return value
        if kind == "json":
            try:
                return json.loads(data)
            except ValueError as e:
                raise ValueError(f"member .{ext} is not valid JSON ({e})") from None
        if kind in _TEXT_EXTS:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"member .{ext} is not UTF-8 text ({e})") from None
        return data


def _ext_type(ext: str) -> str:
    kind = ext.rsplit(".", 1)[-1]
    if kind in _IMAGE_EXTS:
        return "image"
    if kind in _INT_EXTS:
        return "int64"
    if kind == "json":
        return "json"
    return "str" if kind in _TEXT_EXTS else "bytes"


def _first_sample_exts(files: list[str], opener) -> list[str]:
    """The sorted extensions of the first well-formed sample: the schema's fields."""
    for path in files:
        with opener(path) as f:
            samples = list(itertools.islice(_good_samples(path, f), 1))
        for sample in samples:
            if isinstance(sample, _Sample) and not sample.problem:
                exts = sorted(sample.members)
                if "key" in exts:
                    raise ConvertError(f"{path}: extension 'key' clashes with the key field")
                return [
                    check_field_name(e, f"{path}: extension of {sample.first_member!r}")
                    for e in exts
                ]
    raise ConvertError(f"{files[0]}: no well-formed samples found in the input tars")


def _good_samples(path: str, fileobj) -> Iterator[_Sample]:
    for sample in tar_samples(path, fileobj):
        if isinstance(sample, _Sample) and not sample.problem:
            yield sample


def tar_samples(path: str, fileobj=None) -> Iterator[_Sample | SourceRecordError]:
    """The samples of one tar in stream order; unsafe members and broken grouping are errors.
    ``fileobj`` is the tar, open (default: the local file ``path``; ``path`` names it).

    Nothing is ever extracted: member bytes are read into memory only.
    """
    seen: set[str] = set()
    sample: _Sample | None = None
    last = "(start of file)"
    try:
        with tarfile.open(path, mode="r|*", fileobj=fileobj) as tf:
            for member in tf:
                if member.isdir():
                    continue
                name = member.name[2:] if member.name.startswith("./") else member.name
                key, ext = _split(name)
                problem = _unsafe(member)
                if problem is None and not key:
                    continue  # no extension: not part of any sample (as in WebDataset)
                if sample is not None and key != sample.key:
                    yield sample
                    sample = None
                if problem:
                    if sample is not None:
                        sample.problem = f"member {name!r} {problem}"
                    else:
                        yield SourceRecordError(f"{path}: member {name!r} {problem}")
                    last = name
                    continue
                if sample is None:
                    sample = _Sample(key, {}, name)
                    if key in seen:
                        sample.problem = _INTERLEAVED
                    seen.add(key)
                if ext in sample.members:
                    sample.problem = f"has two members with extension {ext!r} ({name!r})"
                else:
                    data = tf.extractfile(member)
                    if data is None:  # never: _unsafe let only regular files through
                        raise tarfile.ReadError(f"member {name!r} has no data")
                    sample.members[ext] = data.read()
                last = name
        if sample is not None:
            yield sample
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        yield SourceRecordError(
            f"{path}: unreadable after member {last!r} ({e}); the rest of this tar is skipped"
        )


def _split(name: str) -> tuple[str, str]:
    """``(key, extension)`` by WebDataset's rule, or ``("", "")`` for a name without one."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return "", ""
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why a member must be rejected (PEP 706 'data' filter rules), or None."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "has '..' in its path"
    if member.issym() or member.islnk():
        return f"is a link (to {member.linkname!r}); links are not allowed"
    if not member.isfile():
        return "is a device, fifo or other special file; only regular files are allowed"
    return None


def tar_files(src: str | os.PathLike | Inputs):
    """The tar files named by ``src``: a file, a directory, a glob or a brace pattern (as
    :class:`~fastload.io.inputs.InputFile` s)."""
    return list_files(src, SUFFIXES, what="tar")
