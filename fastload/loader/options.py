"""Which datasets and arguments take the DataLoader's fast path, and the checks of the options
that only it has (``decode=``, ``transform=``, ``variable=``, ``bad_samples="skip"``). Each
``decode=`` spec checks its own arguments as it is made (ImageDecode, TokenDecode), and
against the dataset's fields when the loader lays out its batches (layout.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch

from ..read.contract import Readable
from ..read.dataset import Dataset
from ..read.mix import Mix
from .badsamples import SkipBadSamples
from .layout import ImageDecode, TokenDecode
from .variable import VariableSpec

__all__ = ["WORKER_TYPES", "fast_capable", "check_fast_options", "encoded_room", "device_of"]

WORKER_TYPES = ("process", "thread")


def fast_capable(dataset: Any) -> bool:
    """A fastload Dataset, or a Mix of fastload Datasets with one schema."""
    return isinstance(dataset, Dataset) or (isinstance(dataset, Mix) and dataset.schema is not None)


def check_fast_options(
    fast: bool,
    decode: Mapping[str, ImageDecode | TokenDecode] | None,
    transform: Callable[[dict], Any] | None,
    variable: Mapping[str, VariableSpec] | None,
    policy: SkipBadSamples | None,
) -> None:
    """The options of the fast path: each needs it (``fast``: a fastload dataset, automatic
    batching, no collate_fn), and some exclude others."""
    if decode and not fast:
        raise ValueError("decode= needs a fastload.Dataset, automatic batching and no collate_fn")
    if transform is not None and not fast:
        raise ValueError(
            "transform= needs a fastload.Dataset, automatic batching and no "
            "collate_fn; with another dataset, transform in its "
            "__getitem__, as with torch's DataLoader"
        )
    specs = dict(decode or {})
    if transform is not None and any(getattr(s, "backend", "cpu") != "cpu" for s in specs.values()):
        raise ValueError(
            "transform= and ImageDecode(backend='dali' or 'nvimgcodec') cannot be combined: "
            "the transform runs in the workers, before DALI or nvImageCodec decodes"
        )
    if transform is not None and any(
        isinstance(s, TokenDecode) or getattr(s, "finished", False) for s in specs.values()
    ):
        raise ValueError(
            "transform= cannot be combined with ImageDecode(dtype=<a float type>) or "
            "TokenDecode: the transform's outputs are its own (normalize in it, or decode to "
            "uint8 and let the loader finish without a transform)"
        )
    both = sorted(set(specs) & set(variable or {}))
    if both:
        raise ValueError(f"field {both[0]!r} is in both decode= and variable=: give it one")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable, got {type(transform).__name__}")
    if variable and not fast:
        raise ValueError("variable= needs a fastload.Dataset, automatic batching and no collate_fn")
    if variable and transform is not None:
        raise ValueError(
            "variable= and transform= cannot be combined: the transform's "
            "outputs are its own (pad them in it)"
        )
    if policy is not None and not fast:
        raise ValueError(
            "bad_samples='skip' needs a fastload.Dataset, automatic batching "
            "and no collate_fn (it skips records that fail their checksum "
            "and images that fail to decode)"
        )


def device_of(device: str | torch.device | None) -> torch.device | None:
    """``device=`` as a torch.device; a CUDA one where torch finds no GPU is an error now."""
    out = torch.device(device) if device is not None else None
    if out is not None and out.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={device!r}, but CUDA is not available here (torch "
            f"{torch.__version__} finds no GPU); leave device unset or use "
            "device='cpu'"
        )
    return out


def encoded_room(dataset: Readable, decode: Mapping[str, ImageDecode | TokenDecode] | None) -> int:
    """Bytes per sample a batch slab keeps for each staged image field's encoded images (0:
    none is DALI's or nvImageCodec's): twice a record's mean size, so nearly every batch fits
    (one that does not sends its images in the worker's message instead)."""
    if not any(getattr(spec, "backend", "cpu") != "cpu" for spec in (decode or {}).values()):
        return 0
    parts = dataset.storage()
    records = sum(s.records for s in parts)
    raw = sum(s.raw_bytes for s in parts)
    return max(4096, -(-2 * raw // max(records, 1) // 64) * 64)
