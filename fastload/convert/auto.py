"""Choosing and opening a source: by name (``--from``) or from what the input looks like."""

from __future__ import annotations

import inspect
import itertools
import os
from typing import Any

from ..errors import ConvertError
from . import imagefolder, jsonl, parquet, tokens, webdataset
from .base import Source
from .images import IMAGE_SUFFIXES

__all__ = ["SOURCES", "detect_source", "open_source"]

SOURCES: dict[str, type[Source]] = {
    "imagefolder": imagefolder.ImageFolderSource,
    "parquet": parquet.ParquetSource,
    "jsonl": jsonl.JsonlSource,
    "webdataset": webdataset.WebDatasetSource,
    "tokens": tokens.TokensSource,
}
# File suffixes that identify each file-based source.
_SUFFIXES = {
    "parquet": parquet.SUFFIXES,
    "jsonl": jsonl.SUFFIXES,
    "webdataset": webdataset.SUFFIXES,
    "tokens": tokens.SUFFIXES,
}
# Look at no more than this many files when guessing what a directory holds.
_SCAN_LIMIT = 10_000


def open_source(src: str, source: str = "auto", *, shard_size: int, **options: Any) -> Source:
    """The source named ``source`` (or detected, for ``"auto"``) reading ``src``.

    ``options`` are the source's own keyword arguments (``seq_len``, ``dtype``, ``overlap``,
    ``decode_check``, ``infer_lines``); one the chosen source does not take is an error.
    """
    name = detect_source(src) if source == "auto" else source
    if name not in SOURCES:
        raise ConvertError(f"unknown source {source!r}; choose one of auto, {', '.join(SOURCES)}")
    cls = SOURCES[name]
    given = {k: v for k, v in options.items() if v is not None}
    takes = [
        p
        for p in inspect.signature(cls.__init__).parameters
        if p not in ("self", "src", "root", "shard_size")
    ]
    unknown = sorted(set(given) - set(takes))
    if unknown:
        raise ConvertError(
            f"source {name!r} does not take {', '.join(unknown)}; it takes "
            f"{', '.join(takes) or 'no options'}"
        )
    return cls(src, shard_size=shard_size, **given)


def detect_source(src: str) -> str:
    """The source that fits ``src``, or ConvertError when none or several do."""
    if "{" in src and not os.path.exists(src):
        return "webdataset"  # a brace pattern of tar shards
    if os.path.isfile(src):
        kind = _kind_of(src)
        if kind is None:
            raise ConvertError(
                f"{src}: cannot tell the input format from the file name; pass "
                f"--from {{{','.join(SOURCES)}}}"
            )
        return kind
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: no such file or directory")
    kinds = _kinds_in(src)
    if len(kinds) == 1:
        return kinds.pop()
    if not kinds:
        raise ConvertError(
            f"{src}: found no input this command converts (image class folders, "
            f"{', '.join(s for v in _SUFFIXES.values() for s in v)})"
        )
    raise ConvertError(
        f"{src}: ambiguous input, it holds {' and '.join(sorted(kinds))} data; "
        "pass --from to choose, or point at a narrower path"
    )


def _kind_of(path: str) -> str | None:
    name = path.lower()
    for kind, suffixes in _SUFFIXES.items():
        if name.endswith(suffixes):
            return kind
    return None


def _kinds_in(root: str) -> set[str]:
    """The kinds of input under a directory (images count only inside class subfolders)."""
    kinds: set[str] = set()
    walk = ((d, f) for d, dirs, files in _walk_visible(root) for f in files)
    for dirpath, name in itertools.islice(walk, _SCAN_LIMIT):
        kind = _kind_of(name)
        if kind is None and name.lower().endswith(IMAGE_SUFFIXES) and dirpath != root:
            kind = "imagefolder"
        if kind:
            kinds.add(kind)
    return kinds


def _walk_visible(root: str):
    """os.walk without hidden files and folders, in sorted order."""
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield dirpath, dirs, sorted(f for f in files if not f.startswith("."))
