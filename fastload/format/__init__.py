"""The on-disk format: schema, record layout, shard writer and reader, manifest.

Knows nothing of torch, fsspec or where bytes live; docs/format.md describes it in prose.
"""

from .manifest import Manifest, ShardInfo
from .record import RecordLayout
from .schema import Field, Schema
from .shard_reader import ShardReader
from .shard_writer import ShardWriter
from .spec import FORMAT_VERSION

__all__ = [
    "Manifest",
    "ShardInfo",
    "RecordLayout",
    "Field",
    "Schema",
    "ShardReader",
    "ShardWriter",
    "FORMAT_VERSION",
]
