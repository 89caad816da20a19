"""How each column of a Parquet/Arrow table becomes fields, Hugging Face features included.

========================================  ===================================================
source column                             fields
========================================  ===================================================
HF ``Image`` (struct {bytes, path})       ``name``: image. Null bytes with a path: the file
                                          at that path, relative to the source and inside it
HF ``ClassLabel``                         ``name``: int64 (-1, as in datasets, is no label);
                                          the names become the dataset's classes
HF ``Audio`` (struct {bytes, path})       ``name``: bytes (the encoded file, not decoded);
                                          ``name_meta``: json ``{"sampling_rate", "path"}``
HF ``Array2D`` .. ``Array5D``             ``name``: ndarray of the feature's dtype and shape
                                          (a first dimension of None varies per record)
binary (or {bytes, path}) whose sampled   ``name``: image
values all are JPEG/PNG/WebP, no features
anything else                             by its Arrow type (:mod:`.arrow_types`): lists of
                                          numbers are arrays, structs and maps json
========================================  ===================================================

``image_columns`` (a list) overrides the features and the sampling: exactly the columns it
names are images; an HF Image column it leaves out keeps its bytes as a ``bytes`` field.

Every converted value is checked: an image that does not probe as one, a path outside the
source, a label past the names, an array of the wrong shape is a bad record naming its column.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConvertError
from ..format.imageinfo import probe_image
from ..format.schema import SCALAR_DTYPES
from ..io.inputs import Inputs
from .arrow_types import column_values, field_type, null_rows
from .base import check_field_name
from .images import image_problem

__all__ = ["Column", "Reader", "plan_columns", "IMAGE_SAMPLE"]

#: Values of a candidate column sampled to decide whether it holds images.
IMAGE_SAMPLE = 16
_ARRAY_TYPES = ("Array2D", "Array3D", "Array4D", "Array5D")
_t = pa.types


@dataclass(frozen=True)
class Column:
    """How one source column becomes fields (see the module docstring)."""

    name: str
    kind: str  # "arrow" | "classlabel" | "image" | "image_bytes" | "audio" | "array"
    fields: tuple[tuple[str, str], ...]  # (field name, type), in order
    feature: Any  # the source's type of the column, as kept in the manifest
    names: tuple[str, ...] | None = None  # a ClassLabel's
    shape: tuple[int | None, ...] | None = None  # an array's


def plan_columns(
    schema: pa.Schema,
    features: dict[str, Any] | None,
    *,
    image_columns: Sequence[str] | None,
    sample: Callable[[list[str]], dict[str, list[Any]]],
    where: str,
) -> list[Column]:
    """A :class:`Column` per column of ``schema``. ``sample(names)`` gives a few values of
    each named column, for the image test of columns without features."""
    features = features or {}
    if image_columns is not None:
        unknown = sorted(set(image_columns) - set(schema.names))
        if unknown:
            raise ConvertError(f"{where}: image columns {unknown} are not columns of it")
        images = set(image_columns)
    else:
        images = {n for n, f in features.items() if _feature_type(f) == "Image"}
        candidates = [
            f.name for f in schema if f.name not in features and _bytes_like(_storage(f.type))
        ]
        if candidates:
            sampled = sample(candidates)
            images |= {n for n in candidates if _all_images(sampled.get(n, []))}
    columns = [_column(f, features.get(f.name), f.name in images, where) for f in schema]
    names = [name for c in columns for name, _ in c.fields]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConvertError(f"{where}: two columns would both become field(s) {clash}; rename one")
    return columns


def _column(field: pa.Field, feature: Any, image: bool, where: str) -> Column:
    name = check_field_name(field.name, f"{where}: column")
    typ = _storage(field.type)
    kind = _feature_type(feature)
    if image or kind == "Image":
        if not _bytes_like(typ):
            raise ConvertError(
                f"{where}: column {name!r} has Arrow type {typ}; an image column is binary, "
                "or a struct with a binary 'bytes' field (and a string 'path')"
            )
        if image:
            return Column(name, "image", ((name, "image"),), feature or {"_type": "Image"})
        return Column(name, "image_bytes", ((name, "bytes"),), feature)
    if kind == "ClassLabel":
        names = feature.get("names")
        if not _t.is_integer(typ) or not isinstance(names, list):
            raise ConvertError(f"{where}: column {name!r} is a ClassLabel without integer labels")
        if not all(isinstance(n, str) for n in names):
            raise ConvertError(f"{where}: column {name!r}: ClassLabel names must be strings")
        return Column(name, "classlabel", ((name, "int64"),), feature, tuple(map(str, names)))
    if kind == "Audio" and _bytes_like(typ):
        meta = check_field_name(f"{name}_meta", f"{where}: column")
        return Column(name, "audio", ((name, "bytes"), (meta, "json")), feature)
    if kind in _ARRAY_TYPES:
        shape, dtype = _array_feature(feature, name, where)
        dims = ",".join("?" if d is None else str(d) for d in shape)
        return Column(name, "array", ((name, f"{dtype}[{dims}]"),), feature, shape=shape)
    spec = field_type(name, typ, where)
    shape = _nested_shape(typ) if "[" in spec and spec.count(",") else None
    return Column(
        name, "arrow", ((name, spec),), feature or {"arrow": str(field.type)}, shape=shape
    )


class Reader:
    """Converts record batches of one source into per-row values of its fields. ``inputs``
    and ``base`` resolve the paths of images stored by path."""

    def __init__(self, columns: list[Column], inputs: Inputs, base: str) -> None:
        self.columns = columns
        self.inputs = inputs
        self.base = base

    def rows(
        self, batch: pa.RecordBatch
    ) -> tuple[list[tuple[int, dict[str, Any]]], dict[int, str]]:
        """``(records, problems)``: ``(row, record)`` for each good row of the batch, and for
        each bad row why (naming the column)."""
        problems: dict[int, str] = {}
        cols = [_storage_array(batch.column(i)) for i in range(batch.num_columns)]
        for c, col in zip(self.columns, cols):  # nulls first: the rest converts without them
            mask = null_rows(col) if c.kind in ("arrow", "classlabel") and not c.shape else None
            for r in np.flatnonzero(mask) if mask is not None else ():
                problems.setdefault(int(r), f"column {c.name!r} {_NULL}")
        kept = np.arange(batch.num_rows)
        if problems:
            keep = np.ones(batch.num_rows, bool)
            keep[list(problems)] = False
            kept = np.flatnonzero(keep)
            cols = [col.filter(pa.array(keep)) for col in cols]
        values: dict[str, Sequence[Any]] = {}
        for c, col in zip(self.columns, cols):
            got, bad = self._convert(col, c)
            for r, why in bad.items():
                problems.setdefault(int(kept[r]), f"column {c.name!r} {why}")
            values.update(got)
        names = list(values)
        records = [
            (int(row), {k: values[k][j] for k in names})
            for j, row in enumerate(kept)
            if int(row) not in problems
        ]
        return records, problems

    def _convert(self, col: pa.Array, c: Column) -> tuple[dict[str, Sequence[Any]], dict[int, str]]:
        name = c.fields[0][0]
        if c.kind in ("image", "image_bytes", "audio"):
            data, paths, bad = self._bytes(col, validate=c.kind == "image")
            if c.kind != "audio":
                return {name: data}, bad
            rate = c.feature.get("sampling_rate") if isinstance(c.feature, dict) else None
            meta = [{"sampling_rate": rate, "path": p} for p in paths]
            return {name: data, c.fields[1][0]: meta}, bad
        if c.shape:
            return _nested_values(col, c.shape, c.fields[0][1].split("[")[0], name)
        if c.kind == "classlabel":
            labels = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
            out_of_range = np.flatnonzero((labels < -1) | (labels >= len(c.names or ())))
            bad = {
                int(r): f"holds label {labels[r]}, not one of its {len(c.names or ())} classes"
                for r in out_of_range
            }
            return {name: labels.tolist()}, bad
        return {name: column_values(col, c.fields[0][1])}, {}

    def _bytes(
        self, col: pa.Array, *, validate: bool
    ) -> tuple[list[Any], list[str | None], dict[int, str]]:
        """The bytes of a binary or {bytes, path} column (read from the path where the bytes
        are null), the paths, and the rows that have none or (``validate``) no image."""
        if _t.is_struct(col.type):
            parts = dict(zip([f.name for f in col.type], col.flatten()))
            data = parts["bytes"].to_pylist()
            paths = parts["path"].to_pylist() if "path" in parts else [None] * len(col)
        else:
            data, paths = col.to_pylist(), [None] * len(col)
        bad: dict[int, str] = {}
        todo = [r for r, d in enumerate(data) if d is None and paths[r]]
        for r, got in zip(todo, self._read_paths([str(paths[r]) for r in todo])):
            if isinstance(got, str):
                bad[r] = got
            else:
                data[r] = got
        for r, d in enumerate(data):
            if r in bad:
                continue
            if d is None:
                bad[r] = "is null (no bytes and no path); fastload fields are not nullable"
            elif validate:
                problem = image_problem(d)
                if problem:
                    bad[r] = f"is {problem}"
        return data, list(paths), bad

    def _read_paths(self, paths: list[str]) -> list[bytes | str]:
        """The bytes of each relative path, or why it is not read."""
        resolved = [self._resolve(p) for p in paths]
        found = self.inputs.cat_many([full for full, problem in resolved if not problem])
        it = iter(found)
        out: list[bytes | str] = []
        for full, problem in resolved:
            if problem:
                out.append(problem)
                continue
            got = next(it)
            if isinstance(got, Exception):  # an OSError or FastloadError, from cat_many
                why = getattr(got, "strerror", None) or got
                out.append(f"has path {full}, which cannot be read ({why})")
            else:
                out.append(got)
        return out

    def _resolve(self, path: str) -> tuple[str, str | None]:
        """``(full path, None)`` for a path inside the source, else ``("", why not)``."""
        outside = (
            f"has path {path!r}, outside the source {self.base}: only files inside it are read"
        )
        if "://" in path or "::" in path:
            return "", outside
        if self.inputs.local:
            full = path if os.path.isabs(path) else os.path.join(self.base, path)
            real, root = os.path.realpath(full), os.path.realpath(self.base)
            return (full, None) if os.path.commonpath([real, root]) == root else ("", outside)
        clean = posixpath.normpath(path)
        if clean.startswith(("/", "../")) or clean == "..":
            return "", outside
        return self.inputs.join(self.base, clean), None


_NULL = (
    "is null (or holds a null number); fastload fields are not nullable: fill or drop nulls first"
)


def _nested_values(
    col: pa.Array, shape: tuple[int | None, ...], dtype: str, name: str
) -> tuple[dict[str, Sequence[Any]], dict[int, str]]:
    """Nested lists of numbers as one ndarray per row of ``shape`` (None: any length), with
    the rows whose lists are null or of another length as problems."""
    n = len(col)
    bad: dict[int, str] = {}
    row_of = np.arange(n)
    arr = col
    for level, dim in enumerate(shape):
        if not (
            _t.is_list(arr.type) or _t.is_large_list(arr.type) or _t.is_fixed_size_list(arr.type)
        ):
            raise ConvertError(
                f"column {name!r} is nested {level} deep, its shape {shape} says more"
            )
        lengths = pc.call_function("list_value_length", [arr])
        for r in np.unique(
            row_of[np.flatnonzero(lengths.is_null().to_numpy(zero_copy_only=False))]
        ):
            bad.setdefault(int(r), "holds a null list")
        counts = lengths.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        if dim is not None:
            for r in np.unique(row_of[np.flatnonzero(counts != dim)]):
                bad.setdefault(
                    int(r), f"has a list of another length than {dim} (shape {list(shape)})"
                )
        row_of = np.repeat(row_of, counts)
        arr = arr.flatten()
    if arr.null_count:
        for r in np.unique(row_of[np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))]):
            bad.setdefault(int(r), "holds a null number")
        arr = arr.fill_null(0)
    flat = arr.to_numpy(zero_copy_only=False).astype(np.dtype(dtype), copy=False)
    per_row = np.bincount(row_of, minlength=n)
    pieces = np.split(flat, np.cumsum(per_row)[:-1])
    # Past the first, every dimension is fixed (plan_columns made sure of it).
    row_shape = tuple(-1 if d is None else int(d) for d in shape)
    values: list[Any] = [None if r in bad else pieces[r].reshape(row_shape) for r in range(n)]
    return {name: values}, bad


def _feature_type(feature: Any) -> str | None:
    return feature.get("_type") if isinstance(feature, dict) else None


def _array_feature(feature: dict, name: str, where: str) -> tuple[tuple[int | None, ...], str]:
    shape, dtype = feature.get("shape"), feature.get("dtype")
    if not isinstance(shape, list):
        shape = []
    ok_shape = bool(shape) and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in shape
    )
    if not ok_shape or None in shape[1:] or dtype not in SCALAR_DTYPES:
        raise ConvertError(
            f"{where}: column {name!r}: {feature.get('_type')} shape {shape!r} / dtype "
            f"{dtype!r} is not an array fastload stores (numeric dtype, only the first "
            "dimension may vary)"
        )
    return tuple(shape), dtype


def _nested_shape(typ: pa.DataType) -> tuple[int | None, ...]:
    """The shape of nested lists (None for a variable-length level)."""
    shape: list[int | None] = []
    while _t.is_list(typ) or _t.is_large_list(typ) or _t.is_fixed_size_list(typ):
        shape.append(typ.list_size if _t.is_fixed_size_list(typ) else None)
        typ = typ.value_type
    return tuple(shape)


def _storage(typ: pa.DataType) -> pa.DataType:
    return typ.storage_type if isinstance(typ, pa.ExtensionType) else typ


def _bytes_like(typ: pa.DataType) -> bool:
    """Binary, or a struct whose 'bytes' field is binary (and 'path', if any, a string)."""
    if _t.is_binary(typ) or _t.is_large_binary(typ):
        return True
    if not _t.is_struct(typ):
        return False
    fields = {typ.field(i).name: typ.field(i).type for i in range(typ.num_fields)}
    path = fields.get("path", pa.string())
    return (
        set(fields) <= {"bytes", "path"}
        and "bytes" in fields
        and (_t.is_binary(fields["bytes"]) or _t.is_large_binary(fields["bytes"]))
        and (_t.is_string(path) or _t.is_large_string(path))
    )


def _all_images(values: list[Any]) -> bool:
    """Whether every sampled value (bytes, or {bytes, path}) is a JPEG, PNG or WebP."""
    data = [v.get("bytes") if isinstance(v, dict) else v for v in values]
    data = [d for d in data if d is not None]
    return bool(data) and all(probe_image(d) is not None for d in data)


def _storage_array(col: pa.Array) -> pa.Array:
    """An extension column (as datasets registers for ArrayXD when imported) as its storage."""
    return col.storage if isinstance(col, pa.ExtensionArray) else col
