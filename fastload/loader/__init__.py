"""The loader: ``fastload.DataLoader`` and its parts (see dataloader.py)."""

from .badsamples import SkipBadSamples
from .dataloader import DataLoader
from .layout import ImageDecode
from .pool import LoaderTimeoutError, WorkerDiedError

__all__ = ["DataLoader", "ImageDecode", "LoaderTimeoutError", "SkipBadSamples", "WorkerDiedError"]
