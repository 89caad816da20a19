"""Field types and schemas.

A schema is an ordered list of named, typed fields. Types are written as short strings::

    "bytes" "str" "json" "bool" "image"
    "int8" ... "int64" "uint8" ... "uint64" "float16" "float32" "float64"   (scalars;
        "int" and "float" mean int64 and float64)
    "uint16[2049]" "float32[?,3]" "uint8[224,224,3]"                         (ndarrays; "?" is
        a dimension that varies from record to record)

Scalars, bools, fixed-shape ndarrays and an image's height/width/format are *fixed-size*: they
sit at fixed offsets in every record, so a batch of them is gathered with one memcpy each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ..errors import SchemaError
from .checksum import hash_json

__all__ = ["Field", "Schema", "SCALAR_DTYPES", "KINDS"]

SCALAR_DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)
_ALIASES = {"int": "int64", "float": "float64"}
KINDS = ("bytes", "str", "json", "image", "scalar", "ndarray")
_NDARRAY_RE = re.compile(r"^(\w+)\[([0-9?,\s]*)\]$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Field:
    """One named, typed field of a record.

    ``kind`` is one of KINDS; ``dtype`` is set for scalars and ndarrays; ``shape`` for ndarrays,
    with ``None`` for a dimension that varies per record.
    """

    name: str
    kind: str
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SchemaError(
                f"field name {self.name!r} is invalid: use letters, digits, '_', '.', '-' "
                "and start with a letter or '_'"
            )
        if self.kind not in KINDS:
            raise SchemaError(f"field {self.name!r}: unknown kind {self.kind!r}; known: {KINDS}")
        if self.kind in ("scalar", "ndarray"):
            if self.dtype not in SCALAR_DTYPES:
                raise SchemaError(
                    f"field {self.name!r}: dtype {self.dtype!r} is not one of {SCALAR_DTYPES}"
                )
        elif self.dtype is not None:
            raise SchemaError(f"field {self.name!r}: kind {self.kind!r} takes no dtype")
        if self.kind == "ndarray":
            if not self.shape or any(
                d is not None and (not isinstance(d, int) or d < 0) for d in self.shape
            ):
                raise SchemaError(
                    f"field {self.name!r}: ndarray shape {self.shape!r} must be a non-empty "
                    "tuple of non-negative ints or None"
                )
        elif self.shape is not None:
            raise SchemaError(f"field {self.name!r}: kind {self.kind!r} takes no shape")

    @classmethod
    def parse(cls, name: str, spec: str) -> Field:
        """Build a field from a type string such as ``"int64"`` or ``"uint16[2049]"``."""
        if not isinstance(spec, str):
            raise SchemaError(f"field {name!r}: type must be a string, got {spec!r}")
        spec = _ALIASES.get(spec.strip(), spec.strip())
        if spec in ("bytes", "str", "json", "image"):
            return cls(name, spec)
        if spec in SCALAR_DTYPES:
            return cls(name, "scalar", spec)
        m = _NDARRAY_RE.match(spec)
        if m:
            dtype = _ALIASES.get(m.group(1), m.group(1))
            dims = [d.strip() for d in m.group(2).split(",") if d.strip()]
            bad = [d for d in dims if d != "?" and not (d.isascii() and d.isdigit())]
            if bad:
                raise SchemaError(
                    f"field {name!r}: ndarray type {spec!r} has invalid dimension "
                    f"{bad[0]!r}; each dimension is a number or '?'"
                )
            shape = tuple(None if d == "?" else int(d) for d in dims)
            return cls(name, "ndarray", dtype, shape)
        raise SchemaError(
            f"field {name!r}: unknown type {spec!r}; expected bytes, str, json, image, bool, "
            "a numeric dtype such as int64, or an ndarray such as uint16[2049] or float32[?,3]"
        )

    @property
    def spec(self) -> str:
        """The type string this field parses from (the inverse of :meth:`parse`)."""
        if self.kind == "scalar":
            return str(self.dtype)
        if self.kind == "ndarray":
            dims = ",".join("?" if d is None else str(d) for d in self.shape or ())
            return f"{self.dtype}[{dims}]"
        return self.kind

    @property
    def np_dtype(self) -> np.dtype:
        """The little-endian numpy dtype of a scalar or ndarray field."""
        if self.dtype is None:
            raise SchemaError(f"field {self.name!r} of kind {self.kind!r} has no dtype")
        return np.dtype(self.dtype).newbyteorder("<")

    @property
    def is_fixed(self) -> bool:
        """Whether the whole value has the same byte size in every record."""
        if self.kind == "scalar":
            return True
        if self.kind == "ndarray":
            return all(d is not None for d in self.shape or ())
        return False

    def __repr__(self) -> str:
        return f"Field({self.name!r}, {self.spec!r})"


SchemaLike = Union["Schema", Mapping[str, Union[str, Field]], Iterable[Field]]


class Schema:
    """An ordered collection of :class:`Field`.

    Build one from a mapping of names to type strings, ``Schema({"image": "image",
    "label": "int64"})``, or from Field objects.
    """

    def __init__(self, fields: SchemaLike) -> None:
        if isinstance(fields, Schema):
            items = list(fields.fields)
        elif isinstance(fields, Mapping):
            # Entries are checked at run time (a name or a type that is no string, a Field
            # named otherwise: SchemaError), which the static types cannot express.
            items = [
                f if isinstance(f, Field) and f.name == name else Field.parse(name, f)  # pyright: ignore[reportArgumentType]
                for name, f in fields.items()
            ]
        else:
            items = list(fields)
        for f in items:
            if not isinstance(f, Field):
                raise SchemaError(f"schema entries must be Field objects, got {f!r}")
        names = [f.name for f in items]
        if not items:
            raise SchemaError("a schema needs at least one field")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaError(f"duplicate field names in schema: {dupes}")
        self.fields: tuple[Field, ...] = tuple(items)
        self._by_name = {f.name: f for f in items}

    def __getitem__(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no field {name!r}; fields are {self.names}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.fields == other.fields

    def __hash__(self) -> int:
        return hash(self.fields)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def to_dict(self) -> dict[str, str]:
        """``{name: type string}``, in field order."""
        return {f.name: f.spec for f in self.fields}

    def to_json(self) -> list[dict[str, str]]:
        """The form stored in the manifest: a list, so field order survives any JSON tool."""
        return [{"name": f.name, "type": f.spec} for f in self.fields]

    @property
    def fingerprint(self) -> int:
        """XXH64 of the canonical JSON of :meth:`to_json`: what a version-2 shard's header
        records of the schema its records were written with."""
        return hash_json(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> Schema:
        """Inverse of :meth:`to_json`."""
        if not isinstance(data, list) or not all(
            isinstance(d, Mapping) and isinstance(d.get("name"), str) and "type" in d for d in data
        ):
            raise SchemaError(
                f"a stored schema must be a list of {{'name': ..., 'type': ...}}, got {data!r}"
            )
        return cls([Field.parse(d["name"], d["type"]) for d in data])

    def __repr__(self) -> str:
        return f"Schema({self.to_dict()!r})"
