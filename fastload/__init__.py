"""fastload: fast, verifiable data loading for PyTorch training.

Write datasets with :class:`Writer`, or from existing data with :func:`convert` (what
``fastload convert`` runs); read them with :class:`Dataset`.

``fastload.convert(src, dst, ...)`` calls :func:`fastload.convert.convert`: the ``convert``
package is callable, and its modules stay importable (``fastload.convert.parquet``).
"""

from typing import TYPE_CHECKING

from .convert import ConvertResult
from .errors import (
    ConvertError,
    CorruptRecordError,
    DecodeError,
    FastloadError,
    IncompleteDatasetError,
    LoaderTimeoutError,
    ManifestError,
    MissingShardError,
    PlanStateError,
    RemoteAccessError,
    RemoteReadError,
    SchemaError,
    ShardChecksumError,
    ShardFormatError,
    SourceRecordError,
    TooManyBadSamplesError,
    WorkerDiedError,
)
from .format.imageinfo import EncodedImage
from .format.schema import Field, Schema
from .read import Dataset, Mix
from .writer import Writer, merge_parts

if TYPE_CHECKING:  # what a call of fastload.convert(...) is, and the lazy names, for type checkers
    from .convert import convert
    from .loader import (
        DataLoader,
        ImageDecode,
        Packed,
        PackRows,
        Pad,
        SkipBadSamples,
        TokenDecode,
    )
else:
    from . import convert

__version__ = "0.1.0"

# The loader pulls in torch (seconds to import); `fastload convert`, `inspect` and `verify`, and
# their worker processes, never need it, so it is imported on first use.
_LAZY = {
    "DataLoader": "loader",
    "ImageDecode": "loader",
    "TokenDecode": "loader",
    "SkipBadSamples": "loader",
    "Pad": "loader",
    "Packed": "loader",
    "PackRows": "loader",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Dataset",
    "DataLoader",
    "ImageDecode",
    "TokenDecode",
    "SkipBadSamples",
    "Pad",
    "Packed",
    "PackRows",
    "Mix",
    "Writer",
    "merge_parts",
    "convert",
    "ConvertResult",
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
    "RemoteReadError",
    "RemoteAccessError",
    "TooManyBadSamplesError",
    "DecodeError",
    "PlanStateError",
    "WorkerDiedError",
    "LoaderTimeoutError",
]
