"""``fastload.Dataset`` at its first import path (it lives in :mod:`fastload.read.dataset`)."""

from .read.dataset import Dataset

__all__ = ["Dataset"]
