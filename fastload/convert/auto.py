"""Choosing and opening a source: by name (``--from``) or from what the input looks like."""

from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Iterator
from typing import Any, Protocol

from ..errors import ConvertError
from ..io.inputs import Inputs, expand_braces, is_pattern
from . import imagefolder, jsonl, parquet, tokens, webdataset
from .base import Source
from .images import IMAGE_SUFFIXES

__all__ = ["SOURCES", "SourceClass", "detect_source", "open_source"]


class SourceClass(Protocol):
    """How a source chosen by name is made: from its input and the shard size, with options
    of its own by keyword (``open_source`` passes only those its ``__init__`` takes)."""

    def __call__(self, src: Inputs, /, *, shard_size: int) -> Source: ...


SOURCES: dict[str, SourceClass] = {
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


def open_source(
    src: str | os.PathLike | Inputs,
    source: str = "auto",
    *,
    shard_size: int,
    storage_options: dict[str, Any] | None = None,
    **options: Any,
) -> Source:
    """The source named ``source`` (or detected, for ``"auto"``) reading ``src``: a path, an
    fsspec URL, a glob or a brace pattern, reached with ``storage_options``.

    ``options`` are the source's own keyword arguments (``seq_len``, ``dtype``, ``overlap``,
    ``decode_check``, ``infer_lines``, ``split``, ``image_columns``); one the chosen source
    does not take is an error.
    """
    inputs = src if isinstance(src, Inputs) else Inputs(src, storage_options)
    name = detect_source(inputs) if source == "auto" else source
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
    return cls(inputs, shard_size=shard_size, **given)


def detect_source(src: str | os.PathLike | Inputs) -> str:
    """The source that fits ``src``, or ConvertError when none or several do."""
    inputs = src if isinstance(src, Inputs) else Inputs(src)
    kind = inputs.kind()
    if kind == "missing":
        raise ConvertError(f"{inputs.src}: no such file or directory")
    if kind == "file":
        found = _kind_of(inputs.src)
        if found is None:
            raise ConvertError(
                f"{inputs.src}: cannot tell the input format from the file name; pass "
                f"--from {{{','.join(SOURCES)}}}"
            )
        return found
    if kind == "pattern":
        # The names a brace pattern spells say what they are; a glob's matches are listed.
        names = expand_braces(inputs.src)
        if any(is_pattern(n) for n in names):
            names = [f.path for f in inputs.matches(inputs.src)]
        if not names:
            raise ConvertError(f"{inputs.src}: no file matches this pattern")
        kinds = {_kind_of(n) for n in names[:_SCAN_LIMIT]}
        only = kinds.pop() if len(kinds) == 1 else None
        if only is None:
            raise ConvertError(
                f"{inputs.src}: the files it names are not all of one known kind "
                f"(e.g. {names[0]}); pass --from {{{','.join(SOURCES)}}}"
            )
        return only
    kinds = _kinds_in(inputs)
    if kinds == {"parquet", "imagefolder"}:
        return "parquet"  # a table and the images its rows name by path (Hugging Face's way)
    if len(kinds) == 1:
        return kinds.pop()
    if not kinds:
        raise ConvertError(
            f"{inputs.src}: found no input this command converts (image class folders, "
            f"{', '.join(s for v in _SUFFIXES.values() for s in v)})"
        )
    raise ConvertError(
        f"{inputs.src}: ambiguous input, it holds {' and '.join(sorted(kinds))} data; "
        "pass --from to choose, or point at a narrower path"
    )


def _kind_of(path: str) -> str | None:
    name = path.lower()
    for kind, suffixes in _SUFFIXES.items():
        if name.endswith(suffixes):
            return kind
    return None


def _kinds_in(inputs: Inputs) -> set[str]:
    """The kinds of input under a directory (images count only inside class subfolders)."""
    kinds: set[str] = set()
    for f in itertools.islice(_files_in(inputs), _SCAN_LIMIT):
        kind = _kind_of(f)
        parts = inputs.relative(f, inputs.src)
        if kind is None and f.lower().endswith(IMAGE_SUFFIXES) and len(parts) > 1:
            kind = "imagefolder"
        if kind:
            kinds.add(kind)
    return kinds


def _files_in(inputs: Inputs) -> Iterator[str]:
    """The non-hidden files under SRC: walked lazily where local (a huge folder is only
    sampled), listed where remote."""
    if not inputs.local:
        yield from (f.path for f in inputs.walk(inputs.src))
        return
    for dirpath, dirs, files in os.walk(inputs.src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith("."):
                yield os.path.join(dirpath, f)
