"""How a batch carries a variable-length array field: ``DataLoader(variable={name: spec})``.

A field such as ``tokens: int32[?]`` or ``points: float32[?,3]`` has a different first
dimension per record, so its values cannot stack into one tensor. By default they come as a
list of arrays, one per sample. A spec turns them into tensors instead:

- :class:`Pad` ``(length=L)``: ``(B, L, ...)`` padded with ``value``, plus ``<name>_lengths``
  ``(B,)``; written straight into the batch slab by the workers (no copy after, the same shape
  every batch: what a compiled model wants). A record longer than ``L`` raises, naming it,
  unless ``truncate=True``. ``Pad()`` without a length pads to the batch's longest instead.
- :class:`Packed`: the values end to end, ``(sum of lengths, ...)``, plus ``<name>_offsets``
  ``(B + 1,)`` where sample ``i`` is ``values[offsets[i]:offsets[i + 1]]`` (the jagged layout
  of ``torch.nested.nested_tensor_from_jagged(values, offsets)``).
- :class:`PackRows` ``(length=L)``: a 1-D token field's sequences laid end to end and cut
  into rows of ``L`` (the last padded with ``value``), ``(R, L)``, plus ``<name>_offsets``
  ``(B + 1,)``, each sequence's start in the flattened rows (``cu_seqlens`` for
  variable-length attention). ``R`` is ``ceil(total / L)``, so it varies with the batch unless
  every sequence has the same length.

All but a fixed-length :class:`Pad` are made by the consumer (they depend on the whole batch,
which several workers may fill a share of each): from a :class:`Ragged` (the values end to end
and their lengths) that a worker filling a whole batch sends, or from the lists of arrays that
shares send.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ..format.schema import Schema

__all__ = [
    "Pad",
    "Packed",
    "PackRows",
    "VariableSpec",
    "Ragged",
    "check_variable",
    "row_shape",
    "fill_padded",
    "collate_variable",
    "empty_value",
]


@dataclass(frozen=True)
class Pad:
    """Pad each sample to ``length`` (None: the batch's longest) with ``value``; adds
    ``<name>_lengths``. ``truncate``: cut longer records to ``length`` instead of raising."""

    length: int | None = None
    value: float = 0
    truncate: bool = False

    def __post_init__(self) -> None:
        if self.length is not None and (
            isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1
        ):
            raise ValueError(f"Pad length must be a positive int or None, got {self.length!r}")
        if self.truncate and self.length is None:
            raise ValueError("Pad(truncate=True) needs a length")


@dataclass(frozen=True)
class Packed:
    """The samples' values end to end, plus ``<name>_offsets``."""


@dataclass(frozen=True)
class PackRows:
    """A 1-D field's sequences end to end, cut into rows of ``length`` (the last padded with
    ``value``), plus ``<name>_offsets``."""

    length: int
    value: float = 0

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"PackRows length must be a positive int, got {self.length!r}")


VariableSpec = Union[Pad, Packed, PackRows]


def extra_name(name: str, spec: VariableSpec) -> str:
    """The key of the second tensor a spec adds: lengths for Pad, offsets otherwise."""
    return f"{name}_lengths" if isinstance(spec, Pad) else f"{name}_offsets"


def check_variable(schema: Schema, variable: Mapping[str, Any] | None) -> dict[str, VariableSpec]:
    """``variable`` checked against the dataset's ``schema``: each key a variable-length
    ndarray field (only its first dimension variable), each value a spec, no key it adds
    already a field."""
    out: dict[str, VariableSpec] = {}
    for name, spec in dict(variable or {}).items():
        if name not in schema:
            raise ValueError(
                f"variable: {name!r} is not a field of the dataset (fields: {schema.to_dict()})"
            )
        field = schema[name]
        shape = tuple(field.shape or ())
        if (
            field.kind != "ndarray"
            or field.is_fixed
            or shape[0] is not None
            or any(d is None for d in shape[1:])
        ):
            raise ValueError(
                f"variable: field {name!r} is {field.spec}; a spec needs an "
                "ndarray whose first dimension only is variable, as 'int32[?]' "
                "or 'float32[?,3]'"
            )
        if not isinstance(spec, (Pad, Packed, PackRows)):
            raise TypeError(
                f"variable[{name!r}] must be fastload.Pad, Packed or PackRows, got {spec!r}"
            )
        if isinstance(spec, PackRows) and len(shape) != 1:
            raise ValueError(f"variable: PackRows needs a 1-D field; {name!r} is {field.spec}")
        value = getattr(spec, "value", 0)
        try:
            fits = np.asarray(value, dtype=field.np_dtype) == value
        except (OverflowError, ValueError, TypeError):
            fits = False
        if not fits:
            raise ValueError(
                f"variable: the pad value {value!r} of {name!r} is not a "
                f"{field.np_dtype} ({field.spec})"
            )
        if extra_name(name, spec) in schema:
            raise ValueError(
                f"variable: {name!r} would add {extra_name(name, spec)!r}, which "
                "is a field of the dataset already"
            )
        out[name] = spec
    return out


@dataclass
class Ragged:
    """A batch's values of a variable-length field end to end (``values``) and each row's
    length (``lengths``; 0 for a skipped row): what a worker sends instead of a list of arrays
    (one array to pickle, not one per row, and nothing left to join)."""

    values: np.ndarray
    lengths: np.ndarray

    @classmethod
    def of(cls, arrays: list, empty: np.ndarray) -> Ragged:
        """From one array per row (None for a skipped row); ``empty``: a 0-length value."""
        rows = [empty if a is None else a for a in arrays]
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        return cls(np.concatenate(rows) if rows else empty, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def offsets(self) -> np.ndarray:
        out = np.zeros(len(self.lengths) + 1, np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def __getitem__(self, rows: np.ndarray) -> Ragged:
        """The rows ``rows`` (an index array), in that order."""
        starts = self.offsets()[:-1][rows]
        lengths = self.lengths[rows]
        take = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        return Ragged(self.values[take], lengths)


def fill_padded(
    values: list, out: np.ndarray, lengths: np.ndarray, spec: Pad, records: np.ndarray, name: str
) -> None:
    """Write ``values`` (one array per row, None for a skipped row) into ``out`` (rows padded
    with ``spec.value``) and their lengths into ``lengths``. A value longer than the pad
    length raises naming its dataset record, unless ``spec.truncate``."""
    length = out.shape[1]
    out.fill(spec.value)
    for i, v in enumerate(values):
        if v is None:
            lengths[i] = 0
            continue
        n = len(v)
        if n > length:
            if not spec.truncate:
                raise ValueError(
                    f"field {name!r} of dataset record {int(records[i])} has {n} "
                    f"items, more than Pad(length={length}) holds (pass "
                    "truncate=True to cut it)"
                )
            n = length
        out[i, :n] = v[:n]
        lengths[i] = n


def row_shape(schema: Schema, name: str) -> tuple[int, ...]:
    """The shape of one element of variable-length field ``name`` (its shape after the
    variable first dimension, all fixed: :func:`check_variable` checked that)."""
    return tuple(int(d) for d in (schema[name].shape or ())[1:] if d is not None)


def empty_value(schema: Schema, name: str) -> np.ndarray:
    """A 0-length value of variable-length field ``name`` (a skipped row's)."""
    return np.zeros((0, *row_shape(schema, name)), schema[name].np_dtype)


def collate_variable(
    batch: dict[str, Any], specs: Mapping[str, VariableSpec], schema: Schema
) -> dict[str, Any]:
    """``batch`` with each field of ``specs`` that came as a list of arrays made into its
    tensors (the key a spec adds right after the field's own)."""
    import torch

    out: dict[str, Any] = {}
    for name, value in batch.items():
        spec = specs.get(name)
        if spec is None or not isinstance(value, (list, Ragged)):
            out[name] = value
            continue
        field = schema[name]
        if isinstance(value, list):  # from shares: one array per row
            value = Ragged.of(value, empty_value(schema, name))
        flat, lengths, offsets = value.values, value.lengths, value.offsets()
        if isinstance(spec, Pad):
            rows, width = len(lengths), int(lengths.max(initial=0))
            inner = row_shape(schema, name)
            padded = np.full((rows, width, *inner), spec.value, field.np_dtype)
            # each value's place in the padded rows: row * width + position in its row
            at = np.repeat(np.arange(rows) * width - offsets[:-1], lengths) + np.arange(len(flat))
            padded.reshape(rows * width, *inner)[at] = flat
            out[name], out[extra_name(name, spec)] = (
                torch.from_numpy(padded),
                torch.from_numpy(lengths),
            )
        elif isinstance(spec, Packed):
            out[name], out[extra_name(name, spec)] = (
                torch.from_numpy(flat),
                torch.from_numpy(offsets),
            )
        else:
            rows = -(-len(flat) // spec.length)
            packed = np.full(rows * spec.length, spec.value, field.np_dtype)
            packed[: len(flat)] = flat
            out[name] = torch.from_numpy(packed.reshape(rows, spec.length))
            out[extra_name(name, spec)] = torch.from_numpy(offsets)
    return out
