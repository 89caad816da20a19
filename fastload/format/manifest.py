"""The manifest: the one JSON file that makes a directory of shards a dataset.

It is written last and atomically, so a dataset without one is an unfinished convert. It holds
nothing that varies between runs (no times, hosts or paths outside the dataset), so the same
input and options give byte-identical output.

From format version 2 on, the manifest carries a checksum of its own content: the XXH64 of the
canonical JSON (see ``checksum.canonical_json``) of the whole document less its ``checksum``
member. Every member is covered, including ones this code does not know (a newer writer's), so
no damage to the manifest can change what a reader sees without being detected: one flipped
bit in a schema's shape would otherwise shorten every row read, with no error anywhere.
"""

from __future__ import annotations

import json
import posixpath
import re
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import ManifestError, SchemaError
from .checksum import format_hash, hash64, hash_json
from .schema import Schema
from .spec import FORMAT_VERSION, SUPPORTED_VERSIONS

__all__ = ["Manifest", "ShardInfo", "UncheckedManifestWarning", "CHECKSUM_KEY"]

_HASH_RE = re.compile(r"^xxh64:[0-9a-f]{16}$")
#: The manifest member that holds the checksum of all the others.
CHECKSUM_KEY = "checksum"
#: The first format version whose manifests must carry a checksum.
CHECKSUMMED_SINCE = 2


class UncheckedManifestWarning(UserWarning):
    """A dataset's manifest has no checksum (format version 1): damage to it goes unseen."""


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
    """``classes`` (optional): the class names of label fields, ``{field: [name, ...]}`` with
    a label's value its name's index; ``features`` (optional): the source's own types of its
    columns as recorded at convert time (Hugging Face features, or what the source had),
    ``{column: JSON}``. Neither changes how records read; both are covered by the checksum."""

    schema: Schema
    shards: tuple[ShardInfo, ...]
    options: dict[str, Any]  # how the shards were written (compression, level, sizes)
    version: int = FORMAT_VERSION
    classes: dict[str, list[str]] | None = None
    features: dict[str, Any] | None = None

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def block_size(self) -> int | None:
        """The block size the shards were written with (``options``), if the manifest says."""
        size = self.options.get("block_size")
        return size if type(size) is int and size > 0 else None

    def to_json(self) -> dict[str, Any]:
        """The manifest document, with its checksum (from version 2 on) over every other
        member: a member added here is covered without further ado."""
        doc = {
            "format": "fastload",
            "version": self.version,
            "schema": self.schema.to_json(),
            "records": self.records,
            "bytes": self.bytes,
            "options": self.options,
            "shards": [s.to_json() for s in self.shards],
        }
        if self.classes is not None:
            doc["classes"] = self.classes
        if self.features is not None:
            doc["features"] = self.features
        if self.version >= CHECKSUMMED_SINCE:
            doc = {"format": "fastload", "version": self.version, CHECKSUM_KEY: "", **doc}
            doc[CHECKSUM_KEY] = content_checksum(doc)
        return doc

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @property
    def fingerprint(self) -> str:
        """Identifies this dataset's content: a hash of the manifest, which hashes every shard."""
        return format_hash(hash64(self.to_bytes()))

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        """Parse and validate a manifest; errors name ``where`` (the manifest's path).

        The checksum is checked before anything else is read from the document, so damage
        is reported as damage, not as whatever field it happened to hit."""
        doc = _parse_json(data, where)
        if not isinstance(doc, dict) or doc.get("format") != "fastload":
            raise ManifestError(f'{where}: not a fastload manifest (no "format": "fastload")')
        intact = _checksum_matches(doc, where)
        version = doc.get("version")
        if type(version) is not int or version not in SUPPORTED_VERSIONS:
            damaged = " (or the manifest is damaged: its checksum does not match)"
            raise ManifestError(
                f"{where}: format version {version!r} is not supported by this fastload "
                f"(supports {list(SUPPORTED_VERSIONS)}); upgrade fastload to read it"
                f"{damaged if intact is False else ''}"
            )
        if intact is False:
            raise ManifestError(
                f"{where}: the manifest is damaged: its content does not match its checksum "
                f"{doc[CHECKSUM_KEY]}; restore it from the original dataset or convert again"
            )
        if intact is None and version >= CHECKSUMMED_SINCE:
            raise ManifestError(
                f'{where}: no "{CHECKSUM_KEY}" member, which format version {version} '
                "manifests always carry: the manifest is damaged or was not written by fastload"
            )
        if intact is None:
            warnings.warn(
                f"{where}: this dataset is format version {version}, whose manifest has no "
                "checksum: damage to the manifest itself cannot be detected (shards and "
                "records are still checked). Convert it again to get a version "
                f"{FORMAT_VERSION} dataset.",
                UncheckedManifestWarning,
                stacklevel=2,
            )
        return cls._from_doc(doc, version, where)

    @classmethod
    def _from_doc(cls, doc: dict[str, Any], version: int, where: str) -> Manifest:
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
        classes = _parse_classes(doc.get("classes"), schema, where)
        features = doc.get("features")
        if features is not None and not isinstance(features, dict):
            raise ManifestError(f'{where}: "features" must be an object')
        manifest = cls(schema, parsed, options, version, classes, features)
        if doc.get("records") != manifest.records:
            raise ManifestError(
                f'{where}: "records" is {doc.get("records")!r} but the shards '
                f"add up to {manifest.records}"
            )
        return manifest


def content_checksum(doc: dict[str, Any]) -> str:
    """The checksum of a manifest document: over every member but the checksum itself."""
    return format_hash(hash_json({k: v for k, v in doc.items() if k != CHECKSUM_KEY}))


def _parse_json(data: bytes, where: str) -> Any:
    if not data.strip():
        raise ManifestError(f"{where}: manifest is empty; the dataset is incomplete or corrupt")
    try:
        return json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # bad JSON, UTF-8, repeated keys, huge ints...
        # No text of the file is quoted: it may be any file a link led to.
        why = f"not UTF-8 at byte {e.start}" if isinstance(e, UnicodeDecodeError) else e
        raise ManifestError(
            f"{where}: manifest is not valid JSON ({why}); the dataset is "
            "corrupt or was not written by fastload"
        ) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key would let two readers (or a reader and the checksum) see different values.
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _checksum_matches(doc: dict[str, Any], where: str) -> bool | None:
    """Whether the document matches its checksum (None: it has none)."""
    if CHECKSUM_KEY not in doc:
        return None
    stated = doc[CHECKSUM_KEY]
    if not isinstance(stated, str) or not _HASH_RE.match(stated):
        raise ManifestError(
            f"{where}: checksum {stated!r} must look like 'xxh64:<16 hex digits>': "
            "the manifest is damaged"
        )
    try:
        return content_checksum(doc) == stated
    except (ValueError, RecursionError):  # a number too large for a float: not ours
        return False


def _parse_classes(value: Any, schema: Schema, where: str) -> dict[str, list[str]] | None:
    """``classes``: absent (None), or names (strings) per field of the schema."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(f'{where}: "classes" must be an object of field: [names]')
    for name, names in value.items():
        if name not in schema:
            raise ManifestError(f'{where}: "classes" names {name!r}, which is not a field')
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ManifestError(f'{where}: "classes" of {name!r} must be a list of strings')
    return value


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
    # NUL cannot be opened at all; newlines, terminal escapes and lone surrogates would make
    # every message that names the shard misleading. fastload never writes such names.
    odd = next((c for c in path if unicodedata.category(c) in ("Cc", "Cs")), None)
    if odd is not None:
        raise fail(
            f"path {path!r} holds U+{ord(odd):04X}, a control character or lone surrogate, "
            "which no shard name has"
        )
    if any(len(part.encode("utf-8")) > 255 for part in path.split("/")):
        raise fail(f"path {path!r} has a name longer than 255 bytes, which no file system holds")
    for key in ("records", "bytes", "blocks", "raw_bytes"):
        value = entry.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise fail(f"{key!r} must be a non-negative integer, got {value!r}")
    if not isinstance(entry.get("hash"), str) or not _HASH_RE.match(entry["hash"]):
        raise fail(f"hash {entry.get('hash')!r} must look like 'xxh64:<16 hex digits>'")
    return ShardInfo(
        path, entry["records"], entry["bytes"], entry["blocks"], entry["raw_bytes"], entry["hash"]
    )
