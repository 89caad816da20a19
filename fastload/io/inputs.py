"""A convert's input files, on any filesystem fsspec knows: finding them and reading them.

:class:`Inputs` names where a convert reads from: a file, a directory, a glob
(``s3://b/train-*.parquet``) or a brace pattern (``gs://b/shard-{000..099}.tar``,
``{a,b}.jsonl``), with the fsspec ``storage_options`` to reach it. It is sent to worker
processes and Ray nodes as its URL and options; each process opens the filesystem again
(filesystem objects hold connections and event loops that do not survive the trip).

Local files are read as files (the sources memory-map them, seek in them). Anything else is
read by ranged GETs of the bytes asked for, each retried on its own under fastload's
:class:`~fastload.io.retry.RetryPolicy` (s3fs and botocore make one attempt each, as for
datasets read from object stores): a Parquet row group costs the GETs of its column chunks,
never the whole file, and a fault half-way through a file costs one range again, not the file.
Errors name the URL: an unreachable endpoint or a missing file is one line, not a traceback.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, TypeVar

import fsspec

from ..errors import ConvertError, FastloadError
from .remote import read_fs_options
from .retry import RetryPolicy, ShortRead, call_with_retries

__all__ = ["Inputs", "InputFile", "expand_braces", "is_pattern"]

T = TypeVar("T")
# Listing answers at once or not at all: an endpoint that does not answer fails in seconds.
_LIST_POLICY = RetryPolicy(attempts=4, budget_s=15.0)
_READ_POLICY = RetryPolicy()
_BUFFER = 4 << 20  # bytes per GET when a remote file is read in order (tar, JSON Lines)
_THREADS = 16  # concurrent requests when many small files are read (images) or listed
_BRACE_RE = re.compile(r"\{([^{}]*)\}")
_GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class InputFile:
    """One input file: ``path`` is how it is shown and opened (a local path, or a URL with
    its protocol), ``size`` its length in bytes."""

    path: str
    size: int


def is_pattern(path: str) -> bool:
    """Whether ``path`` holds a glob or a brace pattern (and so names files by matching)."""
    return "{" in path or any(c in path for c in _GLOB_CHARS)


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``a-000.tar a-001.tar a-002.tar``; ``{x,y}`` lists alternatives."""
    m = _BRACE_RE.search(pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [p for opt in options for p in expand_braces(head + opt + tail)]


class Inputs:
    """Where a convert reads from (see the module docstring)."""

    def __init__(self, src: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        self.src = os.fspath(src)
        if not self.src:
            raise ConvertError("empty input path or URL")
        self.storage_options = dict(storage_options or {})
        protocol = fsspec.core.split_protocol(self.src)[0]
        self.local = protocol in (None, "file", "local")
        self._fs: Any = None
        if self.local:
            self.src = os.path.abspath(fsspec.core.strip_protocol(self.src))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}  # opened again where it is used

    @property
    def fs(self):
        if self._fs is None:
            self._fs = self._open_fs()
        return self._fs

    def _open_fs(self):
        if self.local:
            return fsspec.filesystem("file")
        protocol = fsspec.core.split_protocol(self.src)[0] or "file"
        try:
            fs, _ = fsspec.core.url_to_fs(
                self.src, **read_fs_options(protocol, self.storage_options)
            )
        except (ImportError, ValueError) as e:
            raise ConvertError(f"{self.src}: cannot open its filesystem: {e}") from None
        if protocol in ("s3", "s3a") and "retries" not in self.storage_options:
            fs.retries = 1  # s3fs's own loop; fastload's counts and is bounded
        return fs

    # -- names ------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        """The name of ``path`` (a path on the filesystem) as shown and opened."""
        if self.local:
            return path
        return self.fs.unstrip_protocol(path) if "://" not in path else path

    def join(self, base: str, *parts: str) -> str:
        if self.local:
            return os.path.join(base, *parts)
        return posixpath.join(base, *parts)

    def relative(self, path: str, root: str) -> list[str]:
        """The components of ``path`` below ``root``."""
        if self.local:
            return os.path.relpath(path, root).split(os.sep)
        rel = self._bare(path)[len(self._bare(root)) :].lstrip("/")
        return rel.split("/")

    def base(self) -> str:
        """The directory SRC's files are relative to: SRC if a directory, else the folder of
        the file, or of a pattern's fixed start (``s3://b/data`` for
        ``s3://b/data/train-*.parquet``)."""
        if self.kind() == "dir":
            return self.src
        fixed = self.src
        if is_pattern(fixed):
            cut = min(fixed.index(c) for c in ("{", *_GLOB_CHARS) if c in fixed)
            fixed = fixed[:cut]
        if self.local:
            return os.path.dirname(fixed) or "."
        return fixed.rsplit("/", 1)[0]

    def _bare(self, path: str) -> str:
        return self.fs._strip_protocol(path).rstrip("/")

    # -- finding files ----------------------------------------------------------------------
    def kind(self, path: str | None = None) -> str:
        """``"file"``, ``"dir"``, ``"pattern"`` or ``"missing"`` for ``path`` (default: SRC)."""
        path = self.src if path is None else path
        if self.local:
            if os.path.isfile(path):
                return "file"
            if os.path.isdir(path):
                return "dir"
            return "pattern" if is_pattern(path) else "missing"
        try:
            info = self._list(lambda: self.fs.info(path), path)
        except FileNotFoundError:
            return "pattern" if is_pattern(path) else "missing"
        return "dir" if info.get("type") == "directory" else "file"

    def files(self, suffixes: tuple[str, ...] = (), *, what: str = "input") -> list[InputFile]:
        """The files SRC names: itself if a file; the files under it whose names end with one
        of ``suffixes`` (case-insensitive; every file if none) if a directory, hidden files
        and folders left out, sorted by relative path; the matches of a pattern, sorted.
        ConvertError if there are none."""
        kind = self.kind()
        if kind == "missing":
            raise ConvertError(f"{self.src}: no such file or directory")
        if kind == "file":
            return [InputFile(self.src, self.size(self.src))]
        if kind == "pattern":
            found = self.matches(self.src)
            if not found:
                raise ConvertError(f"{self.src}: no file matches this pattern")
            return found
        found = [f for f in self.walk(self.src) if _has_suffix(f.path, suffixes)]
        if not found:
            listed = f" ({', '.join(suffixes)})" if suffixes else ""
            raise ConvertError(f"{self.src}: no {what} files{listed} found")
        return found

    def walk(self, root: str) -> list[InputFile]:
        """Every non-hidden file under the directory ``root``, sorted by relative path."""
        found: list[InputFile] = []
        if self.local:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for f in filenames:
                    if not f.startswith("."):
                        p = os.path.join(dirpath, f)
                        found.append(InputFile(p, os.path.getsize(p)))
        else:
            listed = self._list(lambda: self.fs.find(root, detail=True, withdirs=False), root)
            for p, info in listed.items():
                parts = self.relative(p, root)
                if info.get("type") != "directory" and not any(c.startswith(".") for c in parts):
                    found.append(InputFile(self.url(p), int(info.get("size") or 0)))
        return sorted(found, key=lambda f: self.relative(f.path, root))

    def subdirs(self, root: str) -> list[str]:
        """The sorted names of ``root``'s non-hidden subdirectories."""
        if self.local:
            with os.scandir(root) as entries:
                return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        listed = self._list(lambda: self.fs.ls(root, detail=True), root)
        names = {
            posixpath.basename(e["name"].rstrip("/"))
            for e in listed
            if e.get("type") == "directory"
        }
        return sorted(n for n in names if n and not n.startswith("."))

    def matches(self, pattern: str) -> list[InputFile]:
        """The files a brace pattern and/or glob names, in the pattern's order (braces) and
        sorted (globs). A brace alternative that names no file is an error: a shard list
        with a hole in it is more likely a mistake than a wish."""
        out: list[InputFile] = []
        missing: list[str] = []
        alternatives = expand_braces(pattern)
        plain = [p for p in alternatives if not any(c in p for c in _GLOB_CHARS)]
        sizes = self._sizes(plain) if plain else {}
        for alt in alternatives:
            if alt in sizes:
                out.append(InputFile(alt, sizes[alt]))
            elif alt in plain:
                missing.append(alt)
            else:
                out += self._glob(alt)
        if missing:
            raise ConvertError(
                f"{pattern}: {len(missing)} of {len(alternatives)} files do not exist, "
                f"e.g. {missing[0]}"
            )
        return out

    def _glob(self, pattern: str) -> list[InputFile]:
        if self.local:
            import glob

            return [
                InputFile(p, os.path.getsize(p)) for p in sorted(glob.glob(pattern)) if _isfile(p)
            ]
        listed = self._list(lambda: self.fs.glob(pattern, detail=True), pattern)
        return [
            InputFile(self.url(p), int(info.get("size") or 0))
            for p, info in sorted(listed.items())
            if info.get("type") != "directory"
        ]

    def _sizes(self, paths: list[str]) -> dict[str, int]:
        """The sizes of those of ``paths`` that are files: one listing per parent directory."""
        if self.local:
            return {p: os.path.getsize(p) for p in paths if _isfile(p)}
        parents: dict[str, list[str]] = {}
        for p in paths:
            parents.setdefault(posixpath.dirname(self._bare(p)), []).append(p)
        sizes: dict[str, int] = {}
        for parent, members in parents.items():
            try:
                listed = self._list(lambda d=parent: self.fs.ls(d, detail=True), parent)
            except FileNotFoundError:
                continue
            files = {
                self._bare(e["name"]): int(e.get("size") or 0)
                for e in listed
                if e.get("type") != "directory"
            }
            for p in members:
                if self._bare(p) in files:
                    sizes[p] = files[self._bare(p)]
        return sizes

    def size(self, path: str) -> int:
        if self.local:
            return os.path.getsize(path)
        return int(self._list(lambda: self.fs.info(path), path).get("size") or 0)

    def _list(self, fn: Callable[[], T], path: str) -> T:
        """A listing call, retried; a missing path raises FileNotFoundError, anything else
        that fails for good a FastloadError naming the URL."""
        try:
            return call_with_retries(lambda _: fn(), self.url(path), _LIST_POLICY)
        except FileNotFoundError:
            raise
        except FastloadError as e:
            raise ConvertError(f"cannot list the input: {e}") from None

    # -- reading ----------------------------------------------------------------------------
    def open(self, path: str, *, size: int | None = None, buffer_size: int = _BUFFER) -> BinaryIO:
        """``path`` for reading: a local file, or a seekable reader whose every read is a
        retried ranged GET (``buffer_size`` bytes at least, for reads in order; 0: exactly
        the bytes each read asks for)."""
        if self.local:
            return open(path, "rb")
        if size is None:
            size = self.size(path)
        raw = _RangeReader(self, path, size)
        if buffer_size <= 0:
            # typeshed's io classes (RawIOBase here) are not typing.IO, though they are files
            return raw  # pyright: ignore[reportReturnType]
        return io.BufferedReader(raw, buffer_size=buffer_size)

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``path`` (the end must not pass the file's)."""
        if end <= start:
            return b""
        if self.local:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(end - start)

        def attempt(_):
            data = self.fs.cat_file(path, start=start, end=end)
            if len(data) != end - start:
                raise ShortRead(f"{len(data)} of {end - start} bytes")
            return data

        return call_with_retries(attempt, f"{self.url(path)} (bytes {start}..{end})", _READ_POLICY)

    def cat(self, path: str) -> bytes:
        """The whole of ``path``."""
        if self.local:
            with open(path, "rb") as f:
                return f.read()
        return call_with_retries(lambda _: self.fs.cat_file(path), self.url(path), _READ_POLICY)

    def cat_many(self, paths: list[str]) -> list[bytes | Exception]:
        """The bytes of each of ``paths``, or the error that reading it ended with; remote
        files are fetched concurrently (each retried on its own)."""

        def one(p: str) -> bytes | Exception:
            try:
                return self.cat(p)
            except (OSError, FastloadError) as e:
                return e

        if self.local or len(paths) < 2:
            return [one(p) for p in paths]
        with ThreadPoolExecutor(min(_THREADS, len(paths))) as pool:
            return list(pool.map(one, paths))

    def map(self, fn: Callable[[T], Any], items: list[T]) -> list[Any]:
        """``[fn(x) for x in items]``, concurrently for remote inputs (metadata of many
        files: each costs a round trip)."""
        if self.local or len(items) < 2:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(_THREADS, len(items))) as pool:
            return list(pool.map(fn, items))


class _RangeReader(io.RawIOBase):
    """A remote file as a seekable raw stream: each read is one retried ranged GET."""

    def __init__(self, inputs: Inputs, path: str, size: int) -> None:
        super().__init__()
        self._inputs, self._path, self._size = inputs, path, size
        self._pos = 0
        self.name = path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._inputs.read_range(self._path, self._pos, self._pos + n)
        memoryview(buffer).cast("B")[:n] = data
        self._pos += n
        return n


def _has_suffix(path: str, suffixes: tuple[str, ...]) -> bool:
    return not suffixes or path.lower().endswith(tuple(s.lower() for s in suffixes))


def _isfile(path: str) -> bool:
    return os.path.isfile(path)
