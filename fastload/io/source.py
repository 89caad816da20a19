"""Byte sources for the shard reader: a memory map locally, ranged reads elsewhere."""

from __future__ import annotations

import os
import stat

from ..errors import MissingShardError, ShardFormatError
from .fs import is_local
from .mapping import map_readonly, note_read, release

__all__ = ["MappedSource", "FileSource", "open_byte_source"]


class MappedSource:
    """A local file mapped into memory: records are zero-copy slices of the map (which
    holds no open file: see mapping.py). Reads through :meth:`read` count against the
    process's budget of mapped data (:func:`fastload.io.mapping.note_read`); a reader
    slicing ``buffer`` itself notes what it reads."""

    def __init__(self, path: str, name: str | None = None, *, root: str | None = None) -> None:
        """``root``: the dataset's directory; given, a shard whose real path lies outside it
        (a symbolic link out of the dataset) is refused."""
        self.name = name or path
        if root is not None:
            _check_inside(path, root, self.name)
        try:
            # O_NONBLOCK: a FIFO in a shard's place must not block the open forever.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise MissingShardError(
                f"{self.name}: shard listed in the manifest does not exist "
                "(deleted, or the dataset was copied incompletely)"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ShardFormatError(f"{self.name}: is not a regular file, so not a shard")
            self.size = info.st_size
            self.path = path
            self.identity = (info.st_dev, info.st_ino)  # the file mapped, should its path change
            self.buffer: memoryview | None = map_readonly(fd, self.size) if self.size else None
        finally:
            os.close(fd)

    def read(self, offset: int, length: int) -> memoryview:
        if offset < 0 or length < 0 or offset + length > self.size or self.buffer is None:
            raise ShardFormatError(
                f"{self.name}: read of {length} bytes at offset {offset} is "
                f"past the end of the {self.size}-byte file"
            )
        note_read(1, length)  # its pages stay mapped here: within this process's budget
        return self.buffer[offset : offset + length]

    def release(self, offset: int, length: int) -> None:
        """This process need not keep bytes ``[offset, offset + length)`` resident (the
        shard's index, once checked): its pages leave the process's memory and come back
        from the page cache when touched again."""
        if self.buffer is not None:
            release(self.buffer, offset, length)

    def close(self) -> None:
        # Unmapped once no slice of it is left (a caller may still hold records).
        self.buffer = None


class FileSource:
    """Ranged reads through fsspec (object stores, HTTP, ...)."""

    buffer: memoryview | None = None

    def __init__(self, fs, path: str, name: str | None = None, size: int | None = None) -> None:
        self.fs, self.path = fs, path
        self.name = name or fs.unstrip_protocol(path)
        if size is None:
            try:
                size = int(fs.size(path))
            except FileNotFoundError:
                raise MissingShardError(
                    f"{self.name}: shard listed in the manifest does not exist"
                ) from None
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ShardFormatError(
                f"{self.name}: read of {length} bytes at offset {offset} is "
                f"past the end of the {self.size}-byte file"
            )
        data = self.fs.cat_file(self.path, start=offset, end=offset + length)
        if len(data) != length:
            raise ShardFormatError(
                f"{self.name}: asked for {length} bytes at offset {offset}, "
                f"got {len(data)} (the object changed or is truncated)"
            )
        return data

    def close(self) -> None:
        pass


def open_byte_source(fs, path: str, name: str | None = None, *, root: str | None = None):
    """A mapped source for local files, ranged reads otherwise. ``root``: for a local file,
    the dataset directory it must really lie in (see :class:`MappedSource`)."""
    if is_local(fs):
        return MappedSource(path, name, root=root)
    return FileSource(fs, path, name)


def _check_inside(path: str, root: str, name: str) -> None:
    """Refuse a shard whose real path (every symbolic link followed) is outside the real path
    of ``root``: a dataset from elsewhere could otherwise make fastload open any file the user
    can read (and, before shards were checked quietly, show its first bytes)."""
    base = _real_root(root)
    real = _real_path(path, root, base)
    if os.path.commonpath([real, base]) != base:
        raise ShardFormatError(
            f"{name}: is a symbolic link to {real}, outside the dataset's directory {base}; "
            "fastload does not follow links out of a dataset unless told to "
            "(Dataset(..., follow_symlinks=True), or --follow-symlinks)"
        )


# A dataset directory's real path, by the path it was given as: resolving it for every shard
# (an lstat per component) was most of the time a loader worker took to open five shards.
# Kept with the directory's identity, and used only while the path still leads to it.
_ROOTS: dict[str, tuple[tuple[int, int], str]] = {}


def _real_root(root: str) -> str:
    """``os.path.realpath(root)``, resolved again whenever ``root`` leads elsewhere."""
    try:
        info = os.stat(root)
    except OSError:
        return os.path.realpath(root)
    identity = (info.st_dev, info.st_ino)
    known = _ROOTS.get(root)
    if known is not None and known[0] == identity:
        return known[1]
    real = os.path.realpath(root)
    if len(_ROOTS) >= 64:
        _ROOTS.clear()
    _ROOTS[root] = (identity, real)
    return real


def _real_path(path: str, root: str, real_root: str) -> str:
    """``os.path.realpath(path)``; for a file directly in ``root`` that is not a link, its
    name under ``root``'s real path ``real_root``. Anything deeper is resolved in full, so a
    link inside the dataset is followed as it is now."""
    head, tail = os.path.split(path)
    if head != root or tail in ("", ".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    return os.path.join(real_root, tail)
