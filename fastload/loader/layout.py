"""Where each field of a batch lives in a batch slab.

Fixed-size fields (scalars, fixed-shape arrays) and decoded images have a known size per
sample, so a batch of ``batch_size`` records has a fixed byte layout: each such field is one
``(n, *shape)`` array at a 64-byte aligned offset of the slab. Workers gather or decode straight
into those arrays; the main process turns them into tensors without copying. Other fields
(bytes, str, json, variable-shape arrays, images without a decoder) travel as Python lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..format.schema import Schema
from .variable import Pad

__all__ = ["BatchLayout", "Slot", "ImageDecode"]

_ALIGN = 64  # a cache line: no two fields share one, and SIMD loads stay aligned


@dataclass(frozen=True)
class ImageDecode:
    """Decode an image field into fixed-size uint8 pixels inside the workers.

    ``train=True``: RandomResizedCrop(size) + random horizontal flip, as torchvision's
    standard ImageNet training transform; ``train=False``: resize + center crop. ``layout``
    is ``"HWC"`` (channels last) or ``"CHW"``.

    ``backend="dali"``: decoded by NVIDIA DALI in the main process instead, on the GPU when
    the loader has ``device="cuda"`` (its batches then arrive there), on DALI's CPU backend
    otherwise, with ``dali_threads`` threads (default: the CPUs, at most 8); the workers only
    read the encoded bytes and draw the same crops (see fastload/decode/dali.py).
    """

    size: int | tuple[int, int] = 224
    train: bool = True
    layout: str = "HWC"
    backend: str = "cpu"
    dali_threads: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in ("HWC", "CHW"):
            raise ValueError(f"layout must be 'HWC' or 'CHW', got {self.layout!r}")
        if self.backend not in ("cpu", "dali"):
            raise ValueError(f"backend must be 'cpu' or 'dali', got {self.backend!r}")
        if self.dali_threads is not None and (
            self.backend != "dali"
            or not isinstance(self.dali_threads, int)
            or self.dali_threads < 1
        ):
            raise ValueError(
                f"dali_threads must be a positive int, with backend='dali'; got "
                f"{self.dali_threads!r}"
            )
        if not self.train and self.hw[0] != self.hw[1]:
            raise ValueError(f"the eval center crop is square; size {self.size!r} is not")
        h, w = self.hw
        if h <= 0 or w <= 0:
            raise ValueError(f"size must be positive, got {self.size!r}")

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    @property
    def shape(self) -> tuple[int, int, int]:
        h, w = self.hw
        return (h, w, 3) if self.layout == "HWC" else (3, h, w)


@dataclass(frozen=True)
class Slot:
    """One field's array in the slab: ``(n, *shape)`` of ``dtype`` at ``offset``."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    sample_bytes: int  # bytes of one sample's value


class BatchLayout:
    """The slab layout of batches of up to ``batch_size`` records of ``schema``; with a
    ``transform`` (see transform.py), of its ``outputs`` instead, and ``input`` is the
    layout the records are read into first. ``encoded_bytes``: room per sample for each
    DALI image field's encoded bytes, which the workers put in the slab (one area of
    ``batch_size * encoded_bytes``, its images end to end) rather than in their message."""

    def __init__(
        self,
        schema: Schema,
        batch_size: int,
        decode: Mapping[str, ImageDecode] | None = None,
        transform: Callable[[dict], Any] | None = None,
        outputs: tuple = (),
        variable: Mapping[str, Any] | None = None,
        encoded_bytes: int = 0,
    ) -> None:
        decode = dict(decode or {})
        for name, spec in decode.items():
            if name not in schema or schema[name].kind != "image":
                raise ValueError(
                    f"decode: {name!r} is not an image field of the dataset "
                    f"(fields: {schema.to_dict()})"
                )
            if not isinstance(spec, ImageDecode):
                raise TypeError(f"decode[{name!r}] must be an ImageDecode, got {spec!r}")
        self.schema = schema
        self.batch_size = batch_size
        #: Image fields decoded in the workers, and those decoded by DALI in the consumer
        #: (read and sent as a DaliBatch each); ``seeds``: each one's number in the batch's
        #: augmentation seed (its place in ``decode`` as given, whichever backend).
        self.decode = {name: spec for name, spec in decode.items() if spec.backend == "cpu"}
        self.dali = {name: spec for name, spec in decode.items() if spec.backend == "dali"}
        self.seeds = {name: f for f, name in enumerate(decode)}
        decode = self.decode
        self.transform = transform
        self.outputs = tuple(outputs)
        self.input = self if transform is None else BatchLayout(schema, batch_size, decode)
        #: Variable-length fields padded to a fixed length in the slab (see variable.py), by
        #: name; each has a ``<name>_lengths`` slot too.
        self.padded = {
            name: spec
            for name, spec in (variable or {}).items()
            if isinstance(spec, Pad) and spec.length is not None
        }
        #: The other variable-length fields with a spec: sent as a Ragged (variable.py).
        self.ragged = tuple(name for name in (variable or {}) if name not in self.padded)
        #: Per DALI field, the slot its encoded images are written to, end to end (not a key
        #: of the batch).
        self.encoded = (
            {name: f"{name}:encoded" for name in self.dali}
            if encoded_bytes and transform is None
            else {}
        )
        if transform is None:
            fixed, names = self._record_slots(encoded_bytes)
        else:
            fixed = [(o.name, o.dtype, o.shape) for o in self.outputs if o.dtype is not None]
            names = [o.name for o in self.outputs]
        #: The batch's keys, in order.
        self.names = tuple(names)
        slots, offset = [], 0
        for name, dtype, shape in fixed:
            sample_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            slots.append(Slot(name, dtype, shape, offset, sample_bytes))
            offset += -(-batch_size * sample_bytes // _ALIGN) * _ALIGN
        self.slots: tuple[Slot, ...] = tuple(slots)
        #: Fields that are gathered straight into the slab (fixed-size ones).
        padding = {
            *self.padded,
            *(f"{name}_lengths" for name in self.padded),
            *self.encoded.values(),
        }
        self.gathered = (
            tuple(s.name for s in slots if s.name not in decode and s.name not in padding)
            if transform is None
            else ()
        )
        #: Fields that travel as lists.
        self.listed = tuple(n for n in self.names if n not in {s.name for s in slots})
        self.slab_size = max(offset, _ALIGN)

    def _record_slots(self, encoded_bytes: int) -> tuple[list[tuple], list[str]]:
        """``(name, dtype, shape)`` of the fixed-size fields, decoded images and padded
        fields (each with its lengths right after it) in schema order, then the areas of
        DALI fields' encoded images; and the batch's keys."""
        schema, decode = self.schema, self.decode
        fixed = [
            (f.name, f.np_dtype, tuple(f.shape or ()))
            for f in schema
            if f.kind in ("scalar", "ndarray") and f.is_fixed
        ]
        fixed += [
            (f.name, np.dtype(np.uint8), decode[f.name].shape) for f in schema if f.name in decode
        ]
        fixed += [
            (name, schema[name].np_dtype, (spec.length, *schema[name].shape[1:]))
            for name, spec in self.padded.items()
        ]
        order = {f.name: i for i, f in enumerate(schema)}
        fixed.sort(key=lambda spec: order[spec[0]])
        names = list(schema.names)
        for name in self.padded:  # its lengths right after it
            names.insert(names.index(name) + 1, f"{name}_lengths")
            fixed.insert(
                [f[0] for f in fixed].index(name) + 1,
                (f"{name}_lengths", np.dtype(np.int64), ()),
            )
        fixed += [(slot, np.dtype(np.uint8), (encoded_bytes,)) for slot in self.encoded.values()]
        return fixed, names

    def views(self, slab: np.ndarray, n: int) -> dict[str, np.ndarray]:
        """The arrays of a batch of ``n`` records inside ``slab`` (a uint8 array)."""
        out = {}
        for s in self.slots:
            size = n * s.sample_bytes
            out[s.name] = slab[s.offset : s.offset + size].view(s.dtype).reshape((n, *s.shape))
        return out
