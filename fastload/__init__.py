"""fastload: fast, verifiable data loading for PyTorch training.

Write datasets with :class:`Writer` (or ``fastload convert``), read them with :class:`Dataset`.
"""

from .dataset import Dataset
from .errors import (
    ConvertError,
    CorruptRecordError,
    FastloadError,
    IncompleteDatasetError,
    ManifestError,
    MissingShardError,
    SchemaError,
    ShardChecksumError,
    ShardFormatError,
    SourceRecordError,
)
from .format.imageinfo import EncodedImage
from .format.schema import Field, Schema
from .loader import DataLoader, ImageDecode
from .writer import Writer, merge_parts

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "DataLoader",
    "ImageDecode",
    "Writer",
    "merge_parts",
    "Schema",
    "Field",
    "EncodedImage",
    "FastloadError",
    "SchemaError",
    "ManifestError",
    "IncompleteDatasetError",
    "ShardFormatError",
    "ShardChecksumError",
    "CorruptRecordError",
    "MissingShardError",
    "ConvertError",
    "SourceRecordError",
]
