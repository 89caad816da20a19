"""Opening a dataset: its manifest (read once per node where asked: io/manifest_share.py),
and the names shards go by in messages."""

from __future__ import annotations

import functools

from ..errors import IncompleteDatasetError, ManifestError
from ..format.manifest import Manifest
from ..format.spec import MANIFEST_NAME
from ..io.fs import join
from ..io.manifest_share import read_shared
from ..io.remote import RemoteStore

__all__ = ["read_manifest", "display_name", "protocol_of"]


def display_name(fs, path: str) -> str:
    """``path`` as messages name it: a local path as it is, else its URL."""
    return path if fs.protocol in ("file", ("file", "local")) else fs.unstrip_protocol(path)


def protocol_of(fs) -> str:
    """The filesystem's protocol (its first name, where it has several)."""
    p = fs.protocol
    return p[0] if isinstance(p, (tuple, list)) else p


def read_manifest(fs, root: str, shown: str, store: RemoteStore | None = None) -> Manifest:
    """The manifest of the dataset at ``root`` (``shown`` in messages), read through
    ``store`` for a remote one: retried, and shared by a node's local ranks where its
    options ask for that."""
    path = join(fs, root, MANIFEST_NAME)
    read = functools.partial(_manifest_bytes, fs, root, shown, path, store)
    cache = store.cache if store is not None else None
    options = store.options if store is not None else None
    if options is not None and options.share_manifest and cache is not None:
        data = read_shared(read, display_name(fs, path), cache.dir, wait_s=options.manifest_wait_s)
    else:
        data = read()
    return Manifest.from_bytes(data, display_name(fs, path))


def _manifest_bytes(fs, root: str, shown: str, path: str, store: RemoteStore | None) -> bytes:
    try:
        return store.cat(path, display_name(fs, path)) if store is not None else fs.cat_file(path)
    except FileNotFoundError:
        if not fs.exists(root):
            raise IncompleteDatasetError(
                f"{shown}: no such dataset (the path does not exist)"
            ) from None
        raise IncompleteDatasetError(
            f"{display_name(fs, path)}: missing; {shown} is not a complete fastload dataset (a "
            "convert that was interrupted leaves no manifest: run it again)"
        ) from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a directory, not a manifest") from None
