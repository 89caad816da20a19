"""How one record's fields are laid out in bytes, and encoding/decoding of records.

A record is::

    fixed region   every fixed-size field at an offset the schema determines (scalars,
                   fixed-shape ndarrays, an image's height/width/format), ordered by alignment
    var ends       one little-endian u32 per variable-size field: where its bytes end,
                   counted from the start of the var data
    var data       the variable-size fields' bytes, in schema order

Because the fixed region is the same structured dtype in every record, a batch of records'
fixed fields is gathered with one memcpy per record and read as a numpy structured array.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _core
from ..errors import SchemaError
from .imageinfo import (
    FORMAT_IDS,
    FORMAT_NAMES,
    JPEG_INDEXED_ID,
    EncodedImage,
    probe_image,
    size_problem,
)
from .schema import Field, Schema

__all__ = ["RecordLayout", "RecordDecodeError"]

_IMAGE_META = np.dtype([("height", "<u4"), ("width", "<u4"), ("format", "u1")])


class RecordDecodeError(ValueError):
    """A record's bytes do not match its layout; the reader adds shard and record context."""


@dataclass(frozen=True)
class _Slot:
    field: Field
    dtype: np.dtype  # of the value in the fixed region (the image's meta for images)


class RecordLayout:
    """The byte layout of records of one schema; used by both the writer and the reader."""

    def __init__(self, schema: Schema, *, jpeg_index: bool = False) -> None:
        """``jpeg_index``: records written store each baseline JPEG with its entropy index
        (``EncodedImage.entropy_index``); reading needs no setting."""
        self.schema = schema
        self.jpeg_index = jpeg_index
        fixed: list[_Slot] = []
        for f in schema:
            if f.kind == "scalar":
                fixed.append(_Slot(f, f.np_dtype))
            elif f.kind == "ndarray" and f.is_fixed:
                fixed.append(_Slot(f, np.dtype((f.np_dtype, tuple(f.shape or ())))))
            elif f.kind == "image":
                fixed.append(_Slot(f, _IMAGE_META))
        self.var_fields: tuple[Field, ...] = tuple(
            f for f in schema if not (f.kind == "scalar" or (f.kind == "ndarray" and f.is_fixed))
        )
        # Largest alignment first keeps every fixed field naturally aligned without padding.
        fixed.sort(key=lambda s: -_alignment(s.dtype))
        names, formats, offsets, offset = [], [], [], 0
        for slot in fixed:
            offset = _round_up(offset, _alignment(slot.dtype))
            names.append(slot.field.name)
            formats.append(slot.dtype)
            offsets.append(offset)
            offset += slot.dtype.itemsize
        self.fixed_size = _round_up(offset, 4)
        n_var = len(self.var_fields)
        names.append("__var_ends__")
        formats.append(np.dtype(("<u4", (n_var,))) if n_var else np.dtype("V0"))
        offsets.append(self.fixed_size)
        self.header_size = self.fixed_size + 4 * n_var
        #: Structured dtype of a record's fixed region plus its var-ends table.
        self.header_dtype = np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": self.header_size}
        )
        self.fixed_fields: tuple[Field, ...] = tuple(s.field for s in fixed)

    # -- writing -------------------------------------------------------------------------
    def encode(self, record: Mapping[str, Any]) -> bytes:
        """The bytes of one record. Raises SchemaError naming the field that does not fit."""
        if not isinstance(record, Mapping):
            raise SchemaError(f"a record must be a dict of field -> value, got {type(record)}")
        missing = [n for n in self.schema.names if n not in record]
        extra = [n for n in record if n not in self.schema]
        if missing or extra:
            raise SchemaError(
                f"record does not match the schema: missing fields {missing}, "
                f"unknown fields {extra}; schema is {self.schema.to_dict()}"
            )
        header = np.zeros((), dtype=self.header_dtype)
        for f in self.fixed_fields:
            header[f.name] = _fixed_value(f, record[f.name])
        parts: list[bytes] = []
        ends = []
        end = 0
        for f in self.var_fields:
            data = _var_bytes(f, record[f.name], header, self.jpeg_index)
            parts.append(data)
            end += len(data)
            if end >= 1 << 32:
                raise SchemaError(f"record is larger than 4 GiB at field {f.name!r}")
            ends.append(end)
        if ends:
            header["__var_ends__"] = ends
        return header.tobytes() + b"".join(parts)

    def encode_columns(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Many records at once, as the rows of a 2-D uint8 array (row i = ``encode`` of
        record i). For schemas of fixed-size fields only; each column holds one field's
        values for every record (shape ``(n, *field shape)``)."""
        if self.var_fields:
            raise SchemaError(
                f"encode_columns needs fixed-size fields only; "
                f"{[f.name for f in self.var_fields]} vary in size"
            )
        names = set(self.schema.names)
        if set(columns) != names:
            raise SchemaError(
                f"columns {sorted(columns)} do not match the schema's fields {sorted(names)}"
            )
        n = len(next(iter(columns.values())))
        rows = np.zeros(n, dtype=self.header_dtype)
        for f in self.fixed_fields:
            column = _checked_array(_column_field(f), columns[f.name])
            if len(column) != n:
                raise SchemaError(f"column {f.name!r} has {len(column)} values, expected {n}")
            rows[f.name] = column
        return rows.view(np.uint8).reshape(n, self.header_size)

    # -- reading -------------------------------------------------------------------------
    def decode(self, buf: memoryview) -> dict[str, Any]:
        """The field values of one record's bytes (values are copies: safe to keep)."""
        if len(buf) < self.header_size:
            raise RecordDecodeError(
                f"record is {len(buf)} bytes, shorter than its {self.header_size}-byte header"
            )
        header = np.frombuffer(buf, dtype=self.header_dtype, count=1)[0]
        out: dict[str, Any] = {}
        for f in self.fixed_fields:
            if f.kind == "image":
                continue
            value = header[f.name]
            out[f.name] = value.copy() if f.kind == "ndarray" else value.item()
        start = 0
        var_data = buf[self.header_size :]
        ends = header["__var_ends__"] if self.var_fields else ()
        for f, end in zip(self.var_fields, ends):
            end = int(end)
            if end < start or end > len(var_data):
                raise RecordDecodeError(
                    f"field {f.name!r} claims bytes [{start}, {end}) but the record has "
                    f"{len(var_data)} bytes of variable data"
                )
            out[f.name] = _var_value(f, var_data[start:end], header)
            start = end
        if start != len(var_data):
            raise RecordDecodeError(
                f"record has {len(var_data) - start} bytes after its last field (a record of "
                "this schema ends with its last variable-size field)"
            )
        return {name: out[name] for name in self.schema.names}

    def problem(self, buf: memoryview) -> str | None:
        """Why a record's bytes can never be read as this schema's, or None: its structure
        (sizes, var ends, shapes, UTF-8, JSON, image metadata) as :meth:`decode` checks it,
        and each image's own header, which must describe the format and size stored with it,
        and a JPEG's entropy index, which must be the one its bytes give (a deep check:
        ``fastload verify --deep``)."""
        try:
            values = self.decode(buf)
        except RecordDecodeError as e:
            return str(e)
        for f in self.var_fields:
            if f.kind != "image":
                continue
            image = values[f.name]
            info = probe_image(image.data)
            if info is None:
                return f"field {f.name!r}: its bytes are not a JPEG, PNG or WebP image"
            stored = (image.format, image.height, image.width)
            if stored != (info.format, info.height, info.width):
                return (
                    f"field {f.name!r}: stored as a {image.format} image of {image.height} x "
                    f"{image.width} pixels, but its header says {info.format}, "
                    f"{info.height} x {info.width}"
                )
            if image.entropy_index is not None:
                built = _core.jpeg_entropy_index(image.data)
                if built is None or built != bytes(image.entropy_index):
                    return f"field {f.name!r}: its entropy index is not the one its JPEG gives"
        return None

    def var_value(
        self, f: Field, data: memoryview, header: np.void, *, image_views: bool = False
    ) -> Any:
        """Decode one variable-size field's bytes (``header`` supplies image metadata).
        ``image_views``: an image's ``data`` is ``data`` itself, not a bytes copy."""
        return _var_value(f, data, header, image_views)


def _column_field(f: Field) -> Field:
    """The field of a whole column of ``f``: one more, leading dimension of any length."""
    if f.kind not in ("scalar", "ndarray"):
        raise SchemaError(f"field {f.name!r} of kind {f.kind!r} cannot be given as a column")
    return Field(f.name, "ndarray", f.dtype, (None, *(f.shape or ())))


def _alignment(dtype: np.dtype) -> int:
    base = dtype.base if dtype.subdtype else dtype
    if base.fields:
        return max(_alignment(entry[0]) for entry in base.fields.values())
    return max(1, min(base.itemsize, 8))


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


def _fixed_value(f: Field, value: Any) -> Any:
    if f.kind == "image":
        return 0  # filled in with the var bytes, once the image is probed
    dtype = f.np_dtype
    if f.kind == "scalar":
        if dtype.kind == "b":
            if not isinstance(value, (bool, np.bool_)):
                raise SchemaError(f"field {f.name!r} is bool, got {type(value).__name__} {value!r}")
            return bool(value)
        if dtype.kind in "iu":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise SchemaError(
                    f"field {f.name!r} is {dtype}, got {type(value).__name__} {value!r}"
                )
            info = np.iinfo(dtype)
            if not info.min <= int(value) <= info.max:
                raise SchemaError(f"field {f.name!r}: {value} does not fit in {dtype}")
            return int(value)
        if isinstance(value, (bool, np.bool_, np.complexfloating)) or not isinstance(
            value, (int, float, np.number)
        ):
            raise SchemaError(f"field {f.name!r} is {dtype}, got {type(value).__name__} {value!r}")
        try:
            with np.errstate(over="ignore"):
                stored = dtype.type(value)
            if not math.isfinite(float(value)) or bool(np.isfinite(stored)):
                return stored
        except OverflowError:
            pass  # an int too large for any float
        raise SchemaError(f"field {f.name!r}: {value!r} does not fit in {dtype}")
    return _checked_array(f, value)


def _checked_array(f: Field, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:  # ragged nested lists, ...
        raise SchemaError(
            f"field {f.name!r} is {f.spec}, got a value that is not an array: {e}"
        ) from None
    dtype = f.np_dtype
    if arr.dtype != dtype and not _castable(arr, dtype):
        raise SchemaError(f"field {f.name!r} is {f.spec}, got an array of {arr.dtype}")
    shape = tuple(f.shape or ())
    if arr.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape, arr.shape)):
        raise SchemaError(f"field {f.name!r} is {f.spec}, got an array of shape {arr.shape}")
    return arr.astype(dtype, copy=False)


def _castable(arr: np.ndarray, dtype: np.dtype) -> bool:
    """Safe casts, plus integer arrays whose values all fit (np.arange gives int64)."""
    if np.can_cast(arr.dtype, dtype, "safe"):
        return True
    if arr.dtype.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        return arr.size == 0 or (info.min <= arr.min() and arr.max() <= info.max)
    return arr.dtype.kind in "iuf" and dtype.kind == "f"


def _var_bytes(f: Field, value: Any, header: np.ndarray, jpeg_index: bool = False) -> bytes:
    kind = f.kind
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise SchemaError(f"field {f.name!r} is bytes, got {type(value).__name__}")
        return bytes(value)
    if kind == "str":
        if not isinstance(value, str):
            raise SchemaError(f"field {f.name!r} is str, got {type(value).__name__}")
        return _encode_utf8(f, value)
    if kind == "json":
        try:
            text = json.dumps(
                value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError, RecursionError) as e:
            raise SchemaError(f"field {f.name!r} is json, but the value is not: {e}") from None
        return _encode_utf8(f, text)
    if kind == "image":
        return _image_bytes(f, value, header, jpeg_index)
    arr = _checked_array(f, value)  # variable-shape ndarray: shape (u64 each), then the data
    return np.asarray(arr.shape, dtype="<u8").tobytes() + np.ascontiguousarray(arr).tobytes()


def _image_bytes(f: Field, value: Any, header: np.ndarray, jpeg_index: bool) -> bytes:
    if isinstance(value, EncodedImage):
        data, info_format, height, width = value.data, value.format, value.height, value.width
        if info_format not in FORMAT_IDS:
            raise SchemaError(f"field {f.name!r}: unknown image format {info_format!r}")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        info = probe_image(data)
        if info is None:
            raise SchemaError(
                f"field {f.name!r}: bytes are not a JPEG, PNG or WebP image "
                f"(they start with {bytes(data[:8])!r})"
            )
        info_format, height, width = info.format, info.height, info.width
    else:
        raise SchemaError(
            f"field {f.name!r} is image: give encoded bytes or an EncodedImage, "
            f"got {type(value).__name__}"
        )
    too_large = size_problem(info_format, height, width)
    if too_large is not None:
        raise SchemaError(f"field {f.name!r}: {too_large}")
    header[f.name] = (height, width, FORMAT_IDS[info_format])
    if jpeg_index and info_format == "jpeg":
        # Built from the bytes every time (an index that came with the value is not trusted):
        # one Huffman pass, ~0.7 ms for a 110 KB photo. None for a JPEG it is not made for.
        index = _core.jpeg_entropy_index(data)
        if index is not None:
            header[f.name] = (height, width, JPEG_INDEXED_ID)
            return b"".join((data, index, len(index).to_bytes(4, "little")))
    return bytes(data)


def _var_value(f: Field, data: memoryview, header: np.void, image_views: bool = False) -> Any:
    kind = f.kind
    if kind == "bytes":
        return bytes(data)
    if kind == "str":
        return _utf8(f, data)
    if kind == "json":
        try:
            return json.loads(_utf8(f, data))
        except (ValueError, RecursionError) as e:
            raise RecordDecodeError(f"field {f.name!r}: invalid JSON ({e})") from None
    if kind == "image":
        meta = header[f.name]
        format_id = int(meta["format"])
        fmt = "jpeg" if format_id == JPEG_INDEXED_ID else FORMAT_NAMES.get(format_id)
        if fmt is None:
            raise RecordDecodeError(f"field {f.name!r}: unknown image format id {format_id}")
        height, width = int(meta["height"]), int(meta["width"])
        too_large = size_problem(fmt, height, width)
        if too_large is not None:
            raise RecordDecodeError(f"field {f.name!r}: {too_large}")
        image, index = _split_index(f, data) if format_id == JPEG_INDEXED_ID else (data, None)
        if image_views:
            return EncodedImage(image, fmt, height, width, index)
        return EncodedImage(
            bytes(image), fmt, height, width, None if index is None else bytes(index)
        )
    ndim = len(f.shape or ())
    if len(data) < 8 * ndim:
        raise RecordDecodeError(f"field {f.name!r}: {len(data)} bytes cannot hold a {ndim}-d shape")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype="<u8", count=ndim))
    if any(want is not None and want != got for want, got in zip(f.shape or (), shape)):
        raise RecordDecodeError(f"field {f.name!r}: shape {shape} is not a {f.spec}")
    dtype = f.np_dtype
    payload = data[8 * ndim :]
    count = math.prod(shape)
    if any(d >= 1 << 40 for d in shape) or count * dtype.itemsize != len(payload):
        raise RecordDecodeError(
            f"field {f.name!r}: shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, "
            f"record holds {len(payload)}"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()


def _encode_utf8(f: Field, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise SchemaError(f"field {f.name!r}: text cannot be encoded as UTF-8 ({e})") from None


def _utf8(f: Field, data: memoryview) -> str:
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError as e:
        raise RecordDecodeError(f"field {f.name!r}: invalid UTF-8 ({e})") from None


def _split_index(f: Field, data: memoryview) -> tuple[memoryview, memoryview]:
    """An indexed JPEG's stored bytes as (the JPEG, its entropy index)."""
    size = int.from_bytes(data[-4:], "little") if len(data) >= 4 else -1
    if size < 0 or size > len(data) - 4:
        raise RecordDecodeError(
            f"field {f.name!r}: an indexed JPEG of {len(data)} bytes cannot hold an index of "
            f"{size} bytes"
        )
    end = len(data) - 4 - size
    return data[:end], data[end : len(data) - 4]
