"""Writing datasets: records in, shards and a manifest out (locally or to any fsspec URL).

A :class:`Writer` rolls shards at ``shard_size`` and writes the manifest when it is closed; an
exception inside ``with Writer(...)`` leaves no manifest, so the output never looks finished.
Several processes can write one dataset together: each opens ``Writer(dst, schema, part=k)``
for its own disjoint part, and :func:`merge_parts` then writes the single manifest.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConvertError, ManifestError
from .format.checksum import format_hash
from .format.codec import BlockCompressor
from .format.manifest import Manifest, ShardInfo
from .format.record import RecordLayout
from .format.schema import Schema, SchemaLike
from .format.shard_writer import ShardWriter
from .format.spec import MANIFEST_NAME, PARTS_DIR, SHARD_SUFFIX, TMP_SUFFIX
from .io.fs import atomic_write, join, open_fs, remove_quietly
from .utils import parse_size

__all__ = ["Writer", "merge_parts", "prepare_destination"]

DEFAULT_SHARD_SIZE = 64 << 20
DEFAULT_BLOCK_SIZE = 1 << 20


class Writer:
    """Writes records to a fastload dataset at ``dst`` (a path or fsspec URL).

    Example::

        with fastload.Writer("out/", {"image": "image", "label": "int64"}) as w:
            w.write({"image": jpeg_bytes, "label": 3})

    ``classes`` (``{"label": ["cat", "dog"]}``: a label field's class names, index = label)
    and ``features`` (the source's own column types, JSON-able) go into the manifest, where
    ``Dataset.classes`` and ``Dataset.features`` find them.

    ``jpeg_index`` (default True): each baseline JPEG of an image field is stored with its
    entropy index (~3 KB for a 640x480 photo, 2-3% of a 110 KB one; building it is one
    Huffman pass, ~0.7 ms for a 110 KB photo), with which the loader decodes only the MCUs
    around a crop: ~20% less JPEG decode time for RandomResizedCrop(224) of ImageNet-sized
    photos (benchmarks/decode.py). The image's bytes read back unchanged either way.
    """

    def __init__(
        self,
        dst: str | os.PathLike,
        schema: SchemaLike,
        *,
        shard_size: int | str = DEFAULT_SHARD_SIZE,
        block_size: int | str = DEFAULT_BLOCK_SIZE,
        compression: str = "auto",
        level: int = 3,
        storage_options: dict[str, Any] | None = None,
        part: int | None = None,
        overwrite: bool = False,
        classes: Mapping[str, Sequence[str]] | None = None,
        features: Mapping[str, Any] | None = None,
        jpeg_index: bool = True,
    ) -> None:
        self.schema = Schema(schema)
        self._classes = _checked_classes(classes, self.schema)
        self._features = dict(features) if features is not None else None
        self.shard_size = parse_size(shard_size)
        self.block_size = parse_size(block_size)
        if self.shard_size <= 0 or self.block_size <= 0:
            raise ValueError("shard_size and block_size must be positive")
        if part is not None and (not isinstance(part, int) or part < 0):
            raise ValueError(f"part must be a non-negative int, got {part!r}")
        self._compressor = BlockCompressor(compression, level)
        self._layout = RecordLayout(self.schema, jpeg_index=jpeg_index)
        self.fs, self.root = open_fs(dst, storage_options)
        self.part = part
        if part is None:
            prepare_destination(dst, overwrite=overwrite, storage_options=storage_options)
        self.fs.makedirs(self.root, exist_ok=True)
        self._options = {
            "compression": compression,
            "level": level,
            "block_size": self.block_size,
            "shard_size": self.shard_size,
        }
        self._shards: list[ShardInfo] = []
        # The open shard's file (nothing to finish while no shard is open) and writer.
        self._file_ctx: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        self._shard: ShardWriter | None = None
        self._closed = False
        self.records_written = 0
        self.bytes_written = 0

    # -- writing --------------------------------------------------------------------------
    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (a dict with exactly the schema's fields)."""
        if self._closed:
            raise ValueError("write() on a closed Writer")
        data = self._layout.encode(record)
        shard = self._shard if self._shard is not None else self._open_shard()
        shard.add(data)
        self.records_written += 1
        if shard.bytes_written + shard.pending_bytes >= self.shard_size:
            self._close_shard(shard)

    def write_columns(self, columns: Mapping[str, Any]) -> None:
        """Append many records given as columns (``{field: array of shape (n, ...)}``).

        For schemas of fixed-size fields only (token samples, numeric tables). Gives the same
        dataset as writing the records one by one, without Python work per record.
        """
        if self._closed:
            raise ValueError("write_columns() on a closed Writer")
        rows = self._layout.encode_columns(columns)
        if self._shard is None:
            self._open_shard()
        # One block at a time, so shards roll at a block boundary, as with write(). The first
        # piece only fills the block a previous call left open, so the rest go whole-block
        # (a misaligned piece would top up record by record, every time).
        start = 0
        while start < len(rows):
            shard = self._shard if self._shard is not None else self._open_shard()
            piece = rows[start : start + shard.records_fitting(rows.shape[1])]
            shard.add_many(piece)
            self.records_written += len(piece)
            start += len(piece)
            if shard.bytes_written >= self.shard_size:
                self._close_shard(shard)

    def _shard_name(self, i: int) -> str:
        if self.part is None:
            return f"shard-{i:05d}{SHARD_SUFFIX}"
        return f"shard-{self.part:05d}-{i:04d}{SHARD_SUFFIX}"

    def _open_shard(self) -> ShardWriter:
        name = self._shard_name(len(self._shards))
        file_ctx = self._file_ctx = atomic_write(self.fs, join(self.fs, self.root, name))
        shard = self._shard = ShardWriter(
            file_ctx.__enter__(),
            self._compressor,
            self.block_size,
            schema_hash=self.schema.fingerprint,
            # a schema of fixed-size fields only: the compact index (docs/format.md)
            record_size=None if self._layout.var_fields else self._layout.header_size,
        )
        self._shard_path = name
        return shard

    def _close_shard(self, shard: ShardWriter) -> None:
        summary = shard.finish()
        self._file_ctx.__exit__(None, None, None)
        self._shards.append(
            ShardInfo(
                self._shard_path,
                summary["records"],
                summary["bytes"],
                summary["blocks"],
                summary["raw_bytes"],
                format_hash(summary["hash"]),
            )
        )
        self.bytes_written += summary["bytes"]
        self._shard, self._file_ctx = None, contextlib.nullcontext()

    # -- finishing ------------------------------------------------------------------------
    def close(self) -> Manifest:
        """Finish the last shard and write the manifest (or this part's entry)."""
        if self._closed:
            raise ValueError("Writer is already closed")
        if self._shard is not None:
            self._close_shard(self._shard)
        self._closed = True
        manifest = Manifest(
            self.schema,
            tuple(self._shards),
            self._options,
            classes=self._classes,
            features=self._features,
        )
        if self.part is None:
            _write_manifest(self.fs, self.root, manifest)
        else:
            self.fs.makedirs(join(self.fs, self.root, PARTS_DIR), exist_ok=True)
            with atomic_write(self.fs, _part_path(self.fs, self.root, self.part)) as f:
                f.write(manifest.to_bytes())
        return manifest

    def abort(self) -> None:
        """Stop without writing a manifest; the shard being written is discarded."""
        with contextlib.suppress(Exception):
            self._file_ctx.__exit__(ConvertError, ConvertError("aborted"), None)
        self._shard, self._file_ctx = None, contextlib.nullcontext()
        self._closed = True

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _part_path(fs, root: str, part: int) -> str:
    return join(fs, join(fs, root, PARTS_DIR), f"part-{part:05d}.json")


def _write_manifest(fs, root: str, manifest: Manifest) -> None:
    with atomic_write(fs, join(fs, root, MANIFEST_NAME), durable=True) as f:
        f.write(manifest.to_bytes())


def merge_parts(
    dst: str | os.PathLike,
    n_parts: int,
    *,
    storage_options: dict[str, Any] | None = None,
    classes: Mapping[str, Sequence[str]] | None = None,
    features: Mapping[str, Any] | None = None,
) -> Manifest:
    """Combine the parts 0..n_parts-1 written by ``Writer(part=k)`` into the dataset manifest,
    with ``classes`` and ``features`` (see :class:`Writer`).

    The manifest is written last and atomically; the part files are removed afterwards.
    """
    fs, root = open_fs(dst, storage_options)
    shards: list[ShardInfo] = []
    schema: Schema | None = None
    options: dict[str, Any] = {}  # part 0's, as every part's
    for k in range(n_parts):
        path = _part_path(fs, root, k)
        try:
            part = Manifest.from_bytes(fs.cat_file(path), path)
        except FileNotFoundError:
            raise ManifestError(f"{path}: part {k} of {n_parts} was never finished") from None
        if schema is not None and part.schema != schema:
            raise ManifestError(
                f"{path}: part {k} has schema {part.schema.to_dict()}, part 0 "
                f"has {schema.to_dict()}"
            )
        schema, options = part.schema, part.options
        shards.extend(part.shards)
    if schema is None:
        raise ManifestError(f"{root}: nothing to merge (0 parts)")
    manifest = Manifest(
        schema,
        tuple(shards),
        options,
        classes=_checked_classes(classes, schema),
        features=dict(features) if features is not None else None,
    )
    _write_manifest(fs, root, manifest)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(join(fs, root, PARTS_DIR), recursive=True)
    return manifest


def _checked_classes(
    classes: Mapping[str, Sequence[str]] | None, schema: Schema
) -> dict[str, list[str]] | None:
    """``classes`` as the manifest keeps them; a field that is not in the schema, or names
    that are not strings, are a ValueError."""
    if classes is None:
        return None
    out = {}
    for name, names in classes.items():
        if name not in schema:
            raise ValueError(f"classes: {name!r} is not a field of the schema")
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"classes of {name!r}: give a list of strings")
        out[name] = list(names)
    return out


def _is_leftover(name: str) -> bool:
    """Files an interrupted convert leaves behind (never anything else)."""
    return name.endswith((SHARD_SUFFIX, TMP_SUFFIX)) or name == PARTS_DIR


def prepare_destination(
    dst: str | os.PathLike, *, overwrite: bool, storage_options: dict[str, Any] | None = None
) -> None:
    """Make ``dst`` ready for a new dataset, refusing to clobber anything by surprise.

    - missing or empty: fine;
    - holds a dataset (a manifest): an error unless ``overwrite``, which removes the manifest
      first (so a crash part-way never leaves a manifest pointing at missing shards), then
      the shards;
    - holds only the leftovers of an interrupted convert (shards, temporary files, parts, but
      no manifest): they are removed;
    - holds any other file: an error; fastload never deletes files it did not write.
    """
    fs, root = open_fs(dst, storage_options)
    if not fs.exists(root):
        return
    if not fs.isdir(root):
        raise ConvertError(f"destination {dst} exists and is not a directory")
    names = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
    others = [n for n in names if n != MANIFEST_NAME and not _is_leftover(n)]
    if others:
        raise ConvertError(
            f"destination {dst} holds files that are not part of a fastload "
            f"dataset ({', '.join(others[:5])}{' ...' if len(others) > 5 else ''});"
            " choose an empty or new directory"
        )
    if MANIFEST_NAME in names:
        if not overwrite:
            raise ConvertError(
                f"destination {dst} already holds a fastload dataset; pass "
                "--overwrite (overwrite=True) to replace it"
            )
        remove_quietly(fs, join(fs, root, MANIFEST_NAME))
    for n in names:
        if _is_leftover(n):
            path = join(fs, root, n)
            if n == PARTS_DIR:
                fs.rm(path, recursive=True)
            else:
                remove_quietly(fs, path)
