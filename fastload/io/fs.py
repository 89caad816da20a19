"""fsspec resolution and the few filesystem operations fastload needs.

Any fsspec URL works (local paths, ``file://``, ``s3://``, ``gs://``, ``memory://`` ...).
Writes are atomic: locally a temporary name renamed into place; on object stores an upload
that only becomes visible when complete.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..format.spec import TMP_SUFFIX

__all__ = [
    "open_fs",
    "reopen_fs",
    "child_session",
    "join",
    "is_local",
    "is_process_local",
    "atomic_write",
    "remove_quietly",
]


def open_fs(url: str | os.PathLike, storage_options: dict[str, Any] | None = None):
    """``(filesystem, path)`` for a local path or fsspec URL."""
    url = os.fspath(url)
    if not url:
        raise ValueError("empty path or URL")
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if is_local(fs):
        path = os.path.abspath(path)
    return fs, path.rstrip("/") or "/"


def reopen_fs(
    fs,
    url: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    *,
    session: Any = None,
):
    """:func:`open_fs` again in a forked child, where the parent's filesystem ``fs`` is not
    usable (its connections and event loop stay with the parent). An s3fs child gets a
    botocore session that shares the parent's parsed service models (:func:`child_session`;
    or ``session``, one the parent made for its children before forking): loading them anew
    cost ~100 ms before each new worker's first GET (measured)."""
    options = dict(storage_options or {})
    if "session" not in options:
        session = session if session is not None else child_session(fs)
        if session is not None:
            options["session"] = session
    return open_fs(url, options)


def child_session(fs) -> Any:
    """For an s3fs filesystem that has made requests: a new, unused botocore session sharing
    only its parsed service models (not its credentials or clients, which hold locks and
    connections of its event loop); None for other filesystems. Made by a parent before it
    forks, each child starts with its own pristine copy and builds none (~15 ms each)."""
    parent = getattr(fs, "session", None)
    if parent is None or not type(fs).__module__.startswith("s3fs"):
        return None
    try:
        from aiobotocore.session import AioSession

        session = AioSession(**getattr(fs, "kwargs", {}))
        session.register_component("data_loader", parent.get_component("data_loader"))
        return session
    except Exception:  # another s3fs or botocore: the child opens it as the parent did
        return None


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def is_process_local(fs) -> bool:
    """Whether ``fs``'s files live inside this process only (fsspec's ``memory://``): another
    process, a worker or a Ray node, would see an empty filesystem of its own."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "memory" in protocols


def join(fs, root: str, name: str) -> str:
    return os.path.join(root, name) if is_local(fs) else posixpath.join(root, name)


@contextlib.contextmanager
def atomic_write(fs, path: str, *, durable: bool = False) -> Iterator[BinaryIO]:
    """A file that appears at ``path`` only if the block completes without an exception.

    ``durable`` also fsyncs it before it appears (the manifest). Shards are not fsynced: that
    doubles the cost of writing them, and a shard lost to a power cut is caught on read by
    its size and checksums, never returned as data.
    """
    if is_local(fs):
        tmp = f"{path}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as f:
                yield f
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            remove_quietly(fs, tmp)
        return
    # Object stores publish an object only when its upload completes, so a failed write leaves
    # nothing behind under the final name. Aborting is done by not closing normally.
    f = fs.open(path, "wb")
    try:
        # a proxy: all but write() is the fsspec file's own, reached through __getattr__
        yield _NamedUpload(f, fs.unstrip_protocol(path))  # pyright: ignore[reportReturnType]
    except BaseException:
        with contextlib.suppress(Exception):
            if hasattr(f, "discard"):
                f.discard()
            elif hasattr(f, "abort"):
                f.abort()
        f.closed = True  # discarded: garbage collection must not try to finish the upload
        raise
    try:
        f.close()
    except OSError as e:
        raise _naming(e, fs.unstrip_protocol(path)) from e


class _NamedUpload:
    """A file being uploaded whose errors name the object (the bare ones from s3fs or gcsfs
    say only "Access Denied")."""

    def __init__(self, f, url: str) -> None:
        self._f, self._url = f, url

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:  # a part of a multipart upload failed
            raise _naming(e, self._url) from e

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _naming(e: OSError, url: str) -> OSError:
    """``e``'s class (PermissionError, ...) with a message that names ``url``."""
    try:
        return type(e)(f"uploading {url} failed: {e}")
    except Exception:
        return OSError(f"uploading {url} failed: {e}")


def remove_quietly(fs, path: str) -> None:
    """Remove a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        if is_local(fs):
            os.remove(path)
        elif fs.exists(path):
            fs.rm(path)
