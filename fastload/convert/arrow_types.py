"""Arrow types to fastload field types, and Arrow columns to per-row values.

=====================================  =============================================
Arrow type                             field type
=====================================  =============================================
bool, int8..int64, uint8..uint64       the same scalar
float16 / float32 / float64            float16 / float32 / float64
string, large_string, string_view      str
binary, large_binary, fixed binary     bytes
fixed_size_list of numbers (nested)    fixed ndarray, e.g. ``float32[3]``, ``uint8[4,4]``
list / large_list of numbers           variable ndarray ``dtype[?]``
list of fixed_size_lists of numbers    ``dtype[?,3]`` (a variable first dimension)
struct, map, other lists               json (only of numbers, bools, strings and nulls)
dictionary<values=T>                   as T (decoded)
anything else (timestamps, decimals)   ConvertError naming the column and type
=====================================  =============================================

Conversion works a column at a time (numpy or ``to_pylist`` per batch), never cell by cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConvertError

__all__ = ["field_type", "null_rows", "column_values"]

_t = pa.types


def field_type(name: str, typ: pa.DataType, where: str) -> str:
    """The fastload type string for an Arrow column, or ConvertError if there is none."""
    if _t.is_dictionary(typ):
        return field_type(name, typ.value_type, where)
    if _is_number(typ):
        return _dtype(typ)
    if _t.is_string(typ) or _t.is_large_string(typ) or _is_string_view(typ):
        return "str"
    if _t.is_binary(typ) or _t.is_large_binary(typ) or _t.is_fixed_size_binary(typ):
        return "bytes"
    if _t.is_fixed_size_list(typ):
        shape, leaf = _fixed_shape(typ)
        if leaf is not None:
            return f"{_dtype(leaf)}[{','.join(map(str, shape))}]"
    if (_t.is_list(typ) or _t.is_large_list(typ)) and _is_number(typ.value_type):
        return f"{_dtype(typ.value_type)}[?]"
    if (_t.is_list(typ) or _t.is_large_list(typ)) and _t.is_fixed_size_list(typ.value_type):
        shape, leaf = _fixed_shape(typ.value_type)
        if leaf is not None:
            return f"{_dtype(leaf)}[?,{','.join(map(str, shape))}]"
    if _json_able(typ):
        return "json"
    raise ConvertError(
        f"{where}: column {name!r} has Arrow type {typ}, which fastload cannot store; cast it "
        "to a supported type first: numbers, bool, string, binary (alone, or an image as "
        "{bytes, path}), lists of numbers, or structs, maps and lists holding only numbers, "
        "bools and strings"
    )


def null_rows(col: pa.Array) -> np.ndarray | None:
    """A bool mask of the rows that are null or hold a null number in a numeric list, or None
    when there are none (fields are not nullable)."""
    mask = col.is_null().to_numpy(zero_copy_only=False) if col.null_count else None
    if _is_numeric_list(col.type):
        values = col.flatten()
        while _t.is_fixed_size_list(values.type):
            values = values.flatten()
        if values.null_count:
            inner = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
            rows = _rows_of_elements(col, inner)
            mask = np.zeros(len(col), bool) if mask is None else mask
            mask[rows] = True
    return mask


def _rows_of_elements(col: pa.Array, elements: np.ndarray) -> np.ndarray:
    """The rows that flattened elements ``elements`` (indices into ``col.flatten()``) belong to."""
    if _t.is_fixed_size_list(col.type):
        per_row = int(np.prod(_fixed_shape(col.type)[0]))
        return elements // per_row
    offsets = col.offsets.to_numpy()
    return np.searchsorted(offsets - offsets[0], elements, side="right") - 1


def column_values(col: pa.Array, spec: str) -> Sequence[Any]:
    """The column's per-row values in the form the record encoder takes (no nulls allowed)."""
    if _t.is_dictionary(col.type):
        col = col.dictionary_decode()
    typ = col.type
    if _is_number(typ):
        return col.to_numpy(zero_copy_only=False).tolist()
    if _t.is_fixed_size_list(typ) and spec != "json":
        shape, _ = _fixed_shape(typ)
        flat = col.flatten()
        while _t.is_fixed_size_list(flat.type):
            flat = flat.flatten()
        return list(flat.to_numpy(zero_copy_only=False).reshape((len(col), *shape)))
    if spec.endswith("[?]"):
        offsets = col.offsets.to_numpy()
        values = col.values.to_numpy(zero_copy_only=False)
        return np.split(values[offsets[0] : offsets[-1]], offsets[1:-1] - offsets[0])
    if spec == "json" and _t.is_map(typ):
        # A map's Python form is a list of (key, value) pairs; a dict is what users expect.
        return [dict(v) for v in col.to_pylist()]
    return col.to_pylist()


def _is_number(typ: pa.DataType) -> bool:
    return _t.is_integer(typ) or _t.is_floating(typ) or _t.is_boolean(typ)


def _is_numeric_list(typ: pa.DataType) -> bool:
    if _t.is_fixed_size_list(typ):
        return _fixed_shape(typ)[1] is not None
    return (_t.is_list(typ) or _t.is_large_list(typ)) and _is_number(typ.value_type)


def _is_string_view(typ: pa.DataType) -> bool:
    return hasattr(_t, "is_string_view") and _t.is_string_view(typ)


def _dtype(typ: pa.DataType) -> str:
    if _t.is_boolean(typ):
        return "bool"
    if _t.is_float16(typ):
        return "float16"
    return str(typ.to_pandas_dtype().__name__)


def _fixed_shape(typ: pa.DataType) -> tuple[tuple[int, ...], pa.DataType | None]:
    """``(shape, leaf type)`` of nested fixed-size lists; leaf is None if not a number."""
    shape = []
    while _t.is_fixed_size_list(typ):
        shape.append(typ.list_size)
        typ = typ.value_type
    return tuple(shape), typ if _is_number(typ) else None


def _json_able(typ: pa.DataType) -> bool:
    """Whether every value of the type converts to JSON (no bytes, dates or decimals)."""
    if _t.is_dictionary(typ):
        return _json_able(typ.value_type)
    if _is_number(typ) or _t.is_null(typ) or _t.is_string(typ) or _t.is_large_string(typ):
        return True
    if _t.is_struct(typ):
        return all(_json_able(typ.field(i).type) for i in range(typ.num_fields))
    if _t.is_map(typ):
        return _json_able(typ.key_type) and _json_able(typ.item_type)
    if _t.is_list(typ) or _t.is_large_list(typ) or _t.is_fixed_size_list(typ):
        return _json_able(typ.value_type)
    return _is_string_view(typ)
