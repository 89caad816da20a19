"""The loader: ``fastload.DataLoader`` and its parts (see dataloader.py)."""

from ..errors import LoaderTimeoutError, WorkerDiedError
from .badsamples import SkipBadSamples
from .dataloader import DataLoader
from .layout import ImageDecode, TokenDecode
from .variable import Packed, PackRows, Pad

__all__ = [
    "DataLoader",
    "ImageDecode",
    "LoaderTimeoutError",
    "Pad",
    "Packed",
    "PackRows",
    "SkipBadSamples",
    "TokenDecode",
    "WorkerDiedError",
]
