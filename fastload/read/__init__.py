"""The read side: datasets and their batched reads into a caller's buffers."""

from .dataset import Dataset
from .mix import Mix

__all__ = ["Dataset", "Mix"]
