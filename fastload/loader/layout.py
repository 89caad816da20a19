"""Where each field of a batch lives in a batch slab.

Fixed-size fields (scalars, fixed-shape arrays) and decoded images have a known size per
sample, so a batch of ``batch_size`` records has a fixed byte layout: each such field is one
``(n, *shape)`` array at a 64-byte aligned offset of the slab. Workers gather or decode straight
into those arrays; the main process turns them into tensors without copying. Other fields
(bytes, str, json, variable-shape arrays, images without a decoder) travel as Python lists.

Finishing (``ImageDecode(dtype=float)``, ``TokenDecode``) decides what a slot holds: what the
workers finish is stored finished (float32, float16, or bfloat16 as its bits in uint16; token
rows as int64/int32 inputs and targets, gathered into a slot of their own first); what is
finished after the slab (on the GPU, or by the training process) stays uint8 pixels and
uint16/uint32 token rows (see finishing.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..decode.finish import TokenDecode
from ..format.schema import Schema
from .imagedecode import ImageDecode
from .variable import Pad, row_shape

__all__ = [
    "BatchLayout",
    "Slot",
    "ImageDecode",
    "TokenDecode",
    "IMAGES_FINISHED_IN_WORKERS",
    "TOKENS_FINISHED_IN_WORKERS",
]

_ALIGN = 64  # a cache line: no two fields share one, and SIMD loads stay aligned

# Where batches that stay on the CPU are finished (with a CUDA device it is always the GPU):
# by the workers into the slab (True), or by the training process into buffers of its own.
# Both ways are kept and tested, and benchmarks/finish_place.py measures one against the
# other, since the answer depends on the machine. What it found on a shared 2-core machine
# (to measure again on a quiet one):
#
# - images (batches of 256 at 224x224 into bfloat16): the pass costs the same CPU time either
#   way (~25 ms a batch) and the rates were alike within the noise; in the workers it is
#   spread over all of them and reads pixels the decoder has just written, and the training
#   process, whose thread also drives the training step, keeps that time.
# - tokens (batches of 16 rows of 2049 into int64 inputs and targets): the training
#   process's pass (~0.1 ms a batch) cost no more CPU in all than the workers' and the rates
#   were alike within the noise; in the training process the slab keeps the uint16 rows, an
#   eighth of the shared memory of two int64 copies (batches of 512 rows of 8192 tokens: 8 MiB
#   a slab instead of 72 MiB, times the slabs in flight).
IMAGES_FINISHED_IN_WORKERS = True
TOKENS_FINISHED_IN_WORKERS = False

# numpy has no bfloat16: such a slot is its bits as uint16, viewed as bfloat16 by torch
_STORAGE = {
    torch.float32: np.dtype(np.float32),
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(np.uint16),
}


@dataclass(frozen=True)
class Slot:
    """One field's array in the slab: ``(n, *shape)`` of ``dtype`` at ``offset``;
    ``torch_dtype``: what its tensor is viewed as where numpy has no such type (bfloat16)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    sample_bytes: int  # bytes of one sample's value
    torch_dtype: torch.dtype | None = None


class BatchLayout:
    """The slab layout of batches of up to ``batch_size`` records of ``schema``; with a
    ``transform`` (see transform.py), of its ``outputs`` instead, and ``input`` is the
    layout the records are read into first. ``encoded_bytes``: room per sample for each
    staged image field's encoded bytes, which the workers put in the slab (one area of
    ``batch_size * encoded_bytes``, its images end to end) rather than in their message.
    ``gpu``: the batches go to a CUDA device, where they are finished."""

    def __init__(
        self,
        schema: Schema,
        batch_size: int,
        decode: Mapping[str, ImageDecode | TokenDecode] | None = None,
        transform: Callable[[dict], Any] | None = None,
        outputs: tuple = (),
        variable: Mapping[str, Any] | None = None,
        encoded_bytes: int = 0,
        gpu: bool = False,
    ) -> None:
        decode = dict(decode or {})
        for name, spec in decode.items():
            check_decode_spec(schema, name, spec)
        self.schema = schema
        self.batch_size = batch_size
        images = {n: s for n, s in decode.items() if isinstance(s, ImageDecode)}
        #: Image fields decoded in the workers, and those decoded in the consumer (``staged``:
        #: by DALI or nvImageCodec, read and sent as an EncodedBatch each; ``dali`` is the
        #: same dict); ``seeds``: each one's number in the batch's augmentation seed (its place
        #: in ``decode`` as given, whichever backend).
        self.decode = {name: spec for name, spec in images.items() if spec.backend == "cpu"}
        self.staged = {name: spec for name, spec in images.items() if spec.backend != "cpu"}
        self.seeds = {name: f for f, name in enumerate(images)}  # (token specs draw none)
        #: Token fields to finish (``TokenDecode``), and each shifted one's targets (a batch
        #: key of its own, right after the field's).
        self.tokens = {n: s for n, s in decode.items() if isinstance(s, TokenDecode)}
        self.targets = {
            spec.targets_name(name): name for name, spec in self.tokens.items() if spec.shift
        }
        #: Fields the workers finish into the slab: images (the others stay uint8 there), and
        #: token fields, whose rows are gathered into a slot of their own first (``rows``; not
        #: a key of the batch). With a GPU the consumer finishes them there instead.
        self.finished_in_workers = {
            name
            for name, spec in self.decode.items()
            if spec.finished and not gpu and IMAGES_FINISHED_IN_WORKERS
        }
        self.rows = (  # (a transform's outputs are its own: no tokens to finish then)
            {name: f"{name}:rows" for name in self.tokens}
            if not gpu and transform is None and TOKENS_FINISHED_IN_WORKERS
            else {}
        )
        self.finished_in_workers |= set(self.rows)
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
        #: Per staged field, the slot its encoded images are written to, end to end (not a
        #: key of the batch).
        self.encoded = (
            {name: f"{name}:encoded" for name in self.staged}
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
        slots, offset = _placed(fixed, batch_size)
        self.slots: tuple[Slot, ...] = tuple(slots)
        self._torch_dtypes = {s.name: s.torch_dtype for s in slots if s.torch_dtype is not None}
        self._route(slots, decode, transform)
        self.slab_size = max(offset, _ALIGN)

    def _route(self, slots: list[Slot], decode: Mapping[str, Any], transform: Any) -> None:
        """Which fields are gathered straight into the slab, and which travel as lists."""
        #: Fields that are gathered straight into the slab (fixed-size ones): field names,
        #: each into its own slot or, for a token field finished in the workers, its ``rows``.
        padding = {
            *self.padded,
            *(f"{name}_lengths" for name in self.padded),
            *self.encoded.values(),
            *self.rows.values(),
            *(t for t, name in self.targets.items() if name in self.rows),
        }
        self.gathered = (
            tuple(s.name for s in slots if s.name not in decode and s.name not in padding)
            if transform is None
            else ()
        )
        #: Fields that travel as lists.
        self.listed = tuple(
            n for n in self.names if n not in {s.name for s in slots} and n not in self.targets
        )

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
            (f.name, *self._image_slot(f.name, decode[f.name])) for f in schema if f.name in decode
        ]
        fixed += [
            (name, schema[name].np_dtype, (spec.length, *row_shape(schema, name)))
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
        for name, spec in self.tokens.items():  # finished here: in its slot, targets after it
            if name in self.rows:
                at = [f[0] for f in fixed].index(name)
                width = (spec.out_length(_row_length(schema, name)),)
                out = np.dtype(str(spec.dtype).replace("torch.", ""))
                fixed[at] = (name, out, width)
                if spec.shift:
                    fixed.insert(at + 1, (spec.targets_name(name), out, width))
            if spec.shift:
                names.insert(names.index(name) + 1, spec.targets_name(name))
        fixed += [(slot, np.dtype(np.uint8), (encoded_bytes,)) for slot in self.encoded.values()]
        fixed += [
            (slot, schema[name].np_dtype, (_row_length(schema, name),))
            for name, slot in self.rows.items()
        ]
        return fixed, names

    def _image_slot(self, name: str, spec: ImageDecode) -> tuple:
        """``(dtype, shape)`` of an image field's slot: finished (a torch dtype) where the
        workers finish it, else its uint8 pixels."""
        if name in self.finished_in_workers:
            return spec.dtype, spec.shape
        return np.dtype(np.uint8), spec.pixel_shape

    @property
    def dali(self) -> dict:
        """The staged image fields (decoded in the consumer; the name predates nvImageCodec)."""
        return self.staged

    def views(self, slab: np.ndarray, n: int) -> dict[str, np.ndarray]:
        """The arrays of a batch of ``n`` records inside ``slab`` (a uint8 array); a
        bfloat16 field's as uint16 (see :meth:`tensors`)."""
        out = {}
        for s in self.slots:
            size = n * s.sample_bytes
            out[s.name] = slab[s.offset : s.offset + size].view(s.dtype).reshape((n, *s.shape))
        return out

    def gather_views(self, views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays the gathered fields are read into, by field name (from :meth:`views`)."""
        return {
            name: views[self.rows[name] if name in self.rows else name] for name in self.gathered
        }

    def tensor(self, name: str, view: np.ndarray) -> torch.Tensor:
        """Field ``name``'s view (from :meth:`views`) as a tensor of its type, no copy."""
        t = torch.from_numpy(view)
        torch_dtype = self._torch_dtypes.get(name)
        return t.view(torch_dtype) if torch_dtype is not None else t


def _row_length(schema: Schema, name: str) -> int:
    """The length of a fixed one-dimensional field's rows."""
    return int((schema[name].shape or (0,))[0] or 0)


def check_decode_spec(schema: Schema, name: str, spec: Any) -> None:
    """``decode[name]``: an ImageDecode of an image field, or a TokenDecode of a fixed-length
    row of uint16/uint32 tokens; else a ValueError (TypeError for another kind of spec)."""
    if name not in schema:
        raise ValueError(f"decode: the dataset has no field {name!r} (fields: {schema.to_dict()})")
    field = schema[name]
    if isinstance(spec, ImageDecode):
        if field.kind != "image":
            raise ValueError(
                f"decode: {name!r} is not an image field of the dataset "
                f"(fields: {schema.to_dict()})"
            )
    elif isinstance(spec, TokenDecode):
        shape = tuple(field.shape or ())
        if field.kind != "ndarray" or not field.is_fixed or len(shape) != 1:
            raise ValueError(
                f"decode: TokenDecode needs a fixed-length row of tokens (uint16[L] or "
                f"uint32[L]); field {name!r} is {field.spec}"
            )
        try:
            spec.check_tokens(field.np_dtype)
            spec.out_length(_row_length(schema, name))
        except ValueError as e:
            raise ValueError(f"decode[{name!r}]: {e}") from None
    else:
        raise TypeError(
            f"decode[{name!r}] must be an ImageDecode (image fields) or a TokenDecode (token "
            f"rows), got {spec!r}"
        )


def _placed(fixed: list[tuple], batch_size: int) -> tuple[list[Slot], int]:
    """Slots for ``(name, dtype, shape)`` of one sample each, laid out one after another for
    ``batch_size`` samples, each aligned; and the bytes they take."""
    slots, offset = [], 0
    for name, dtype, shape in fixed:
        torch_dtype = None
        if isinstance(dtype, torch.dtype):  # an image finished in the workers
            dtype, torch_dtype = _STORAGE[dtype], dtype
        sample_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        slots.append(Slot(name, dtype, shape, offset, sample_bytes, torch_dtype))
        offset += -(-batch_size * sample_bytes // _ALIGN) * _ALIGN
    return slots, offset
