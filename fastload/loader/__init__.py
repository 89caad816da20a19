"""The loader: ``fastload.DataLoader`` and its parts (see dataloader.py)."""

from .badsamples import SkipBadSamples
from .dataloader import DataLoader
from .layout import ImageDecode
from .pool import LoaderTimeoutError, WorkerDiedError
from .variable import Packed, PackRows, Pad

__all__ = [
    "DataLoader",
    "ImageDecode",
    "LoaderTimeoutError",
    "Pad",
    "Packed",
    "PackRows",
    "SkipBadSamples",
    "WorkerDiedError",
]
