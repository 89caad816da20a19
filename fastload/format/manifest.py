"""The manifest: the one JSON file that makes a directory of shards a dataset.

It is written last and atomically, so a dataset without one is an unfinished convert. It holds
nothing that varies between runs (no times, hosts or paths outside the dataset), so the same
input and options give byte-identical output.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ManifestError, SchemaError
from .checksum import format_hash, hash64
from .schema import Schema
from .spec import FORMAT_VERSION, SUPPORTED_VERSIONS

__all__ = ["Manifest", "ShardInfo"]

_HASH_RE = re.compile(r"^xxh64:[0-9a-f]{16}$")


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it. ``path`` is relative to the dataset root."""

    path: str
    records: int
    bytes: int
    blocks: int
    raw_bytes: int
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "records": self.records,
            "bytes": self.bytes,
            "blocks": self.blocks,
            "raw_bytes": self.raw_bytes,
            "hash": self.hash,
        }

    @property
    def hash_value(self) -> int:
        return int(self.hash.split(":", 1)[1], 16)


@dataclass(frozen=True)
class Manifest:
    schema: Schema
    shards: tuple[ShardInfo, ...]
    options: dict[str, Any]  # how the shards were written (compression, level, sizes)
    version: int = FORMAT_VERSION

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "fastload",
            "version": self.version,
            "schema": self.schema.to_json(),
            "records": self.records,
            "bytes": self.bytes,
            "options": self.options,
            "shards": [s.to_json() for s in self.shards],
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @property
    def fingerprint(self) -> str:
        """Identifies this dataset's content: a hash of the manifest, which hashes every shard."""
        return format_hash(hash64(self.to_bytes()))

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        """Parse and validate a manifest; errors name ``where`` (the manifest's path)."""
        if not data.strip():
            raise ManifestError(f"{where}: manifest is empty; the dataset is incomplete or corrupt")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ManifestError(
                f"{where}: manifest is not valid JSON ({e}); the dataset is "
                "corrupt or was not written by fastload"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != "fastload":
            raise ManifestError(f'{where}: not a fastload manifest (no "format": "fastload")')
        version = doc.get("version")
        if version not in SUPPORTED_VERSIONS:
            raise ManifestError(
                f"{where}: format version {version!r} is not supported by this fastload "
                f"(supports {list(SUPPORTED_VERSIONS)}); upgrade fastload to read it"
            )
        try:
            schema = Schema.from_json(doc.get("schema"))
        except SchemaError as e:
            raise ManifestError(f"{where}: invalid schema: {e}") from None
        shards = doc.get("shards")
        if not isinstance(shards, list):
            raise ManifestError(f'{where}: "shards" must be a list')
        parsed = tuple(_parse_shard(s, i, where) for i, s in enumerate(shards))
        options = doc.get("options", {})
        if not isinstance(options, dict):
            raise ManifestError(f'{where}: "options" must be an object')
        manifest = cls(schema, parsed, options, version)
        if doc.get("records") != manifest.records:
            raise ManifestError(
                f'{where}: "records" is {doc.get("records")!r} but the shards '
                f"add up to {manifest.records}"
            )
        return manifest


def _parse_shard(entry: Any, i: int, where: str) -> ShardInfo:
    def fail(why: str) -> ManifestError:
        return ManifestError(f"{where}: shard entry {i}: {why}")

    if not isinstance(entry, dict):
        raise fail("must be an object")
    path = entry.get("path")
    # Shard paths are relative and stay inside the dataset: a manifest is untrusted input.
    if (
        not isinstance(path, str)
        or not path
        or path.startswith("/")
        or "\\" in path
        or ".." in path.split("/")
        or posixpath.normpath(path) != path
        or ":" in path
    ):
        raise fail(f"path {path!r} must be a plain relative path inside the dataset")
    for key in ("records", "bytes", "blocks", "raw_bytes"):
        value = entry.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise fail(f"{key!r} must be a non-negative integer, got {value!r}")
    if not isinstance(entry.get("hash"), str) or not _HASH_RE.match(entry["hash"]):
        raise fail(f"hash {entry.get('hash')!r} must look like 'xxh64:<16 hex digits>'")
    return ShardInfo(
        path, entry["records"], entry["bytes"], entry["blocks"], entry["raw_bytes"], entry["hash"]
    )
