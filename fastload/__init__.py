"""fastload: fast, verifiable data loading for PyTorch training.

Write datasets with :class:`Writer`, or from existing data with :func:`convert` (what
``fastload convert`` runs); read them with :class:`Dataset`.

``fastload.convert(src, dst, ...)`` calls :func:`fastload.convert.convert`: the ``convert``
package is callable, and its modules stay importable (``fastload.convert.parquet``).
"""

from typing import TYPE_CHECKING

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
    from .convert import ConvertResult, convert
    from .loader import (
        DataLoader,
        ImageDecode,
        Packed,
        PackRows,
        Pad,
        SkipBadSamples,
        TokenDecode,
    )
__version__ = "0.1.0"

# The loader pulls in torch (seconds to import); `fastload convert`, `inspect` and `verify`, and
# their worker processes, never need it, so it is imported on first use. The convert package
# pulls in pyarrow (~25 MB in every process, and a training process's loader workers inherit
# it), which reading and loading never need: imported on first use too.
_LAZY = {
    "convert": "",
    "ConvertResult": "convert",
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

        module = _LAZY[name]
        if not module:  # a subpackage itself (fastload.convert is callable)
            return importlib.import_module(f".{name}", __name__)
        value = getattr(importlib.import_module(f".{module}", __name__), name)
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
