"""Schemas (type strings), the record layout (encode/decode) and image probing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import fastload
from fastload.errors import SchemaError
from fastload.format.imageinfo import EncodedImage, ImageInfo, probe_image
from fastload.format.record import RecordDecodeError, RecordLayout
from fastload.format.schema import SCALAR_DTYPES, Field, Schema

from .formattools import values_equal

FUZZ = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------------------- type strings


@pytest.mark.parametrize(
    "spec, canonical, kind",
    [
        ("bytes", "bytes", "bytes"),
        ("str", "str", "str"),
        ("json", "json", "json"),
        ("image", "image", "image"),
        ("bool", "bool", "scalar"),
        ("int", "int64", "scalar"),
        ("float", "float64", "scalar"),
        (" uint8 ", "uint8", "scalar"),
        ("uint16[2049]", "uint16[2049]", "ndarray"),
        ("float32[?,3]", "float32[?,3]", "ndarray"),
        ("uint8[224, 224, 3]", "uint8[224,224,3]", "ndarray"),
        ("int[ ? ]", "int64[?]", "ndarray"),
        ("bool[0]", "bool[0]", "ndarray"),
        ("float16[?,?,0]", "float16[?,?,0]", "ndarray"),
    ]
    + [(d, d, "scalar") for d in SCALAR_DTYPES],
)
def test_type_string_round_trip(spec, canonical, kind):
    f = Field.parse("x", spec)
    assert f.spec == canonical and f.kind == kind
    assert Field.parse("x", f.spec) == f
    schema = Schema({"x": spec, "y": "bytes"})
    assert Schema.from_json(schema.to_json()) == schema
    assert Schema(schema.to_dict()) == schema
    assert schema.names == ["x", "y"]


@st.composite
def type_strings(draw):
    kind = draw(st.sampled_from(["bytes", "str", "json", "image", "scalar", "ndarray"]))
    if kind == "scalar":
        return draw(st.sampled_from(SCALAR_DTYPES))
    if kind == "ndarray":
        dims = draw(
            st.lists(
                st.one_of(st.just("?"), st.integers(0, 10**6).map(str)), min_size=1, max_size=4
            )
        )
        return f"{draw(st.sampled_from(SCALAR_DTYPES))}[{','.join(dims)}]"
    return kind


@FUZZ
@given(st.lists(type_strings(), min_size=1, max_size=6))
def test_schema_json_round_trip_property(specs):
    schema = Schema({f"f{k}": s for k, s in enumerate(specs)})
    assert [f.spec for f in schema] == specs
    assert Schema.from_json(schema.to_json()) == schema


@pytest.mark.parametrize(
    "spec",
    [
        "complex64",
        "int128",
        "uint8[]",
        "uint8[-1]",
        "uint8[1 2]",
        "uint8[??]",
        "uint8[1?]",
        "uint8[3",
        "image[3]",
        "str[2]",
        "",
        "Int64",
        "uint8[²]",
        "uint8[٣]",
        42,
        None,
    ],
)
def test_bad_type_strings_raise_schema_error_naming_the_field(spec):
    with pytest.raises(SchemaError, match="'weird'"):
        Field.parse("weird", spec)
    with pytest.raises(SchemaError):
        Schema.from_json([{"name": "weird", "type": spec}])


@pytest.mark.parametrize(
    "fields, match",
    [
        ({}, "at least one field"),
        ({"1abc": "int64"}, "'1abc'"),
        ({"a b": "int64"}, "'a b'"),
        (lambda: [Field("a", "bytes"), Field("a", "str")], "duplicate"),
        (lambda: [Field("a", "bytes", "int64")], "'a'"),
        (lambda: [Field("a", "scalar")], "'a'"),
        (lambda: [Field("a", "ndarray", "int64", ())], "'a'"),
        (lambda: [Field("a", "ndarray", "int64", (-1,))], "'a'"),
        (lambda: [Field("a", "str", None, (3,))], "'a'"),
        (lambda: [Field("a", "blob")], "'a'"),
        (["not a field"], "Field objects"),
    ],
)
def test_invalid_schemas(fields, match):
    with pytest.raises(SchemaError, match=match):
        Schema(fields() if callable(fields) else fields)


def test_schema_from_json_rejects_other_shapes():
    for bad in [None, {"a": "int64"}, [{"name": "a"}], [{"type": "int64"}], [["a", "int64"]]]:
        with pytest.raises(SchemaError):
            Schema.from_json(bad)


# --------------------------------------------------------------------------- encoding errors


def png(h: int = 3, w: int = 5) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


GOOD = {
    "b": b"x",
    "s": "x",
    "j": [1],
    "flag": True,
    "i8": 1,
    "u64": 1,
    "f16": 1.0,
    "f64": 1.0,
    "fixed": np.zeros((2, 3), np.int16),
    "var": np.zeros((0, 2), np.float32),
    "img": png(),
}
TYPES = {
    "b": "bytes",
    "s": "str",
    "j": "json",
    "flag": "bool",
    "i8": "int8",
    "u64": "uint64",
    "f16": "float16",
    "f64": "float64",
    "fixed": "int16[2,3]",
    "var": "float32[?,2]",
    "img": "image",
}

BAD_VALUES = [
    ("b", "text"),
    ("b", 3),
    ("b", None),
    ("s", b"bytes"),
    ("s", 3),
    ("s", "\ud800"),
    ("j", {1, 2}),
    ("j", float("nan")),
    ("j", object()),
    ("j", "\udfff"),
    ("flag", 1),
    ("flag", "yes"),
    ("flag", None),
    ("i8", 128),
    ("i8", -129),
    ("i8", True),
    ("i8", 1.0),
    ("i8", "1"),
    ("i8", np.float32(1)),
    ("u64", -1),
    ("u64", 2**64),
    ("u64", None),
    ("f16", 1e10),
    ("f16", "1.0"),
    ("f16", True),
    ("f16", 1j),
    ("f64", 10**400),
    ("fixed", np.zeros((3, 2), np.int16)),
    ("fixed", np.zeros(6, np.int16)),
    ("fixed", np.zeros((2, 3), np.float32)),
    ("fixed", [[1, 2, 3], [4, 5]]),
    ("fixed", np.full((2, 3), 70000)),
    ("fixed", "abc"),
    ("var", np.zeros((2, 3), np.float32)),
    ("var", np.zeros(4, np.float32)),
    ("var", np.zeros((1, 2), np.complex64)),
    ("var", [[1.0, 2.0], [3.0]]),
    ("var", [None, None]),
    ("img", b"GIF89a not supported"),
    ("img", b""),
    ("img", "a.jpg"),
    ("img", np.zeros((2, 2, 3))),
    ("img", b"\x89PNG\r\n\x1a\n"),
    ("img", EncodedImage(b"x", "gif", 1, 1)),
]


@pytest.mark.parametrize(
    "name, value", BAD_VALUES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_VALUES)]
)
def test_wrong_values_raise_schema_error_naming_the_field(name, value):
    layout = RecordLayout(Schema(TYPES))
    layout.encode(GOOD)  # the good record encodes
    with pytest.raises(SchemaError, match=f"'{name}'"):
        layout.encode({**GOOD, name: value})


def test_missing_and_extra_fields_are_named():
    layout = RecordLayout(Schema(TYPES))
    with pytest.raises(SchemaError, match=r"missing fields \['s'\]"):
        layout.encode({k: v for k, v in GOOD.items() if k != "s"})
    with pytest.raises(SchemaError, match=r"unknown fields \['zzz'\]"):
        layout.encode({**GOOD, "zzz": 1})
    with pytest.raises(SchemaError, match="dict"):
        layout.encode([1, 2])


def test_writer_reports_schema_errors_and_keeps_going(tmp_path):
    with fastload.Writer(tmp_path / "ds", {"i": "int8", "b": "bytes"}, block_size=64) as w:
        w.write({"i": 1, "b": b"a"})
        with pytest.raises(SchemaError, match="'i'"):
            w.write({"i": 1000, "b": b"b"})
        with pytest.raises(SchemaError, match="'b'"):
            w.write({"i": 2, "b": "not bytes"})
        w.write({"i": 3, "b": b"c"})
    with fastload.Dataset(tmp_path / "ds") as ds:
        assert [r["i"] for r in ds] == [1, 3] and [r["b"] for r in ds] == [b"a", b"c"]


# --------------------------------------------------------------------------- layout


def test_layout_aligns_fixed_fields_and_places_var_ends():
    layout = RecordLayout(
        Schema(
            {
                "a": "uint8",
                "b": "float64",
                "c": "int16[3]",
                "d": "bytes",
                "img": "image",
                "e": "str",
            }
        )
    )
    dt = layout.header_dtype
    for name in ("a", "b", "c", "img"):
        base = dt.fields[name][0].base
        align = (
            min(8, max(base.fields[n][0].itemsize for n in base.names))
            if base.fields
            else base.itemsize
        )
        assert dt.fields[name][1] % align == 0, name
    assert dt.fields["__var_ends__"][1] == layout.fixed_size and layout.fixed_size % 4 == 0
    assert [f.name for f in layout.var_fields] == ["d", "img", "e"]
    assert layout.header_size == layout.fixed_size + 12


def test_var_ends_are_cumulative_little_endian_u32():
    layout = RecordLayout(Schema({"x": "uint32", "a": "bytes", "b": "str"}))
    data = layout.encode({"x": 0x01020304, "a": b"abc", "b": "hé"})
    assert data[:4] == bytes([4, 3, 2, 1])
    assert np.frombuffer(data[4:12], "<u4").tolist() == [3, 6]
    assert data[12:] == b"abch\xc3\xa9"


@st.composite
def schema_and_record(draw):
    n = draw(st.integers(1, 5))
    types, rec = {}, {}
    for k in range(n):
        kind = draw(st.sampled_from(["bytes", "str", "json", "scalar", "fixed", "var"]))
        name = f"f{k}"
        if kind == "bytes":
            types[name], rec[name] = "bytes", draw(st.binary(max_size=40))
        elif kind == "str":
            types[name], rec[name] = "str", draw(st.text(max_size=20))
        elif kind == "json":
            types[name] = "json"
            rec[name] = draw(
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: (
                        st.lists(c, max_size=3)
                        | st.dictionaries(st.text(max_size=3), c, max_size=3)
                    ),
                    max_leaves=8,
                )
            )
        else:
            dtype = draw(st.sampled_from(SCALAR_DTYPES))
            dt = np.dtype(dtype)
            if kind == "scalar":
                types[name] = dtype
                if dt.kind == "b":
                    rec[name] = draw(st.booleans())
                elif dt.kind in "iu":
                    info = np.iinfo(dt)
                    rec[name] = draw(st.integers(int(info.min), int(info.max)))
                else:
                    rec[name] = float(draw(st.floats(width=dt.itemsize * 8, allow_nan=False)))
            else:
                shape = tuple(draw(st.lists(st.integers(0, 3), min_size=1, max_size=3)))
                dims = ",".join(
                    "?" if kind == "var" and j % 2 == 0 else str(d) for j, d in enumerate(shape)
                )
                types[name] = f"{dtype}[{dims}]"
                raw = draw(
                    st.binary(
                        min_size=dt.itemsize * int(np.prod(shape)),
                        max_size=dt.itemsize * int(np.prod(shape)),
                    )
                )
                rec[name] = np.frombuffer(raw, dt).reshape(shape)
    return types, rec


@FUZZ
@given(schema_and_record())
def test_encode_decode_round_trip_property(case):
    types, rec = case
    layout = RecordLayout(Schema(types))
    data = layout.encode(rec)
    assert len(data) >= layout.header_size
    got = layout.decode(memoryview(data))
    assert list(got) == list(rec)
    for k, v in rec.items():
        if isinstance(v, np.ndarray):
            assert got[k].dtype == v.dtype.newbyteorder("<") and got[k].shape == v.shape
            assert got[k].tobytes() == v.tobytes(), k
        elif types[k] == "json":
            assert got[k] == v
        else:
            assert values_equal(got[k], v), (k, got[k], v)


FUZZ_SCHEMAS = [
    {"a": "int64", "b": "bytes"},
    {"s": "str", "j": "json"},
    {"img": "image"},
    {"v": "float32[?,3]", "w": "uint8[?]", "x": "int16[2]"},
    {"f": "bool", "g": "float16"},
    {"n": "uint64[?,?,?,?]", "s": "str", "img": "image", "j": "json", "x": "int8"},
]


@FUZZ
@given(st.sampled_from(FUZZ_SCHEMAS), st.binary(max_size=200))
def test_decode_of_random_bytes_raises_only_record_decode_error(types, data):
    layout = RecordLayout(Schema(types))
    try:
        out = layout.decode(memoryview(data))
    except RecordDecodeError:
        return
    assert list(out) == list(types)


def fuzz_record(types: dict) -> dict:
    values = {
        "a": 7,
        "b": b"bytes",
        "s": "hé",
        "j": {"a": [1, 2]},
        "img": png(),
        "v": np.ones((2, 3), np.float32),
        "w": np.arange(5, dtype=np.uint8),
        "x": np.array([1, 2], np.int16) if types.get("x") == "int16[2]" else -3,
        "f": True,
        "g": 0.5,
        "n": np.zeros((1, 0, 2, 1), np.uint64),
    }
    return {k: values[k] for k in types}


@FUZZ
@given(st.sampled_from(FUZZ_SCHEMAS), st.data())
def test_decode_of_mutated_records_raises_only_record_decode_error(types, data):
    layout = RecordLayout(Schema(types))
    buf = bytearray(layout.encode(fuzz_record(types)))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    try:
        out = layout.decode(memoryview(bytes(buf[:cut])))
    except RecordDecodeError:
        return
    assert list(out) == list(types)


def test_decode_names_the_bad_field():
    layout = RecordLayout(Schema({"a": "bytes", "j": "json", "v": "float32[?]"}))
    data = layout.encode({"a": b"xy", "j": [1], "v": np.ones(2, np.float32)})
    # 12 bytes of var ends, then a = [12, 14), j = [14, 17), v = shape [17, 25) + data [25, 33)
    assert len(data) == 33 and data[14:17] == b"[1]"

    def patched(start: int, new: bytes) -> memoryview:
        return memoryview(data[:start] + new + data[start + len(new) :])

    with pytest.raises(RecordDecodeError, match="header"):
        layout.decode(memoryview(data[:5]))
    with pytest.raises(RecordDecodeError, match="'a'"):
        layout.decode(patched(0, (10**6).to_bytes(4, "little")))  # a's end past the record
    with pytest.raises(RecordDecodeError, match="'j'"):
        layout.decode(patched(4, (1).to_bytes(4, "little")))  # j ends before it starts
    with pytest.raises(RecordDecodeError, match="'j'.*JSON"):
        layout.decode(patched(14, b"[1,"))  # no longer parses
    with pytest.raises(RecordDecodeError, match="'j'.*UTF-8"):
        layout.decode(patched(14, b"\xff"))
    with pytest.raises(RecordDecodeError, match="'v'"):
        layout.decode(patched(17, (2**39).to_bytes(8, "little")))  # shape claims 2**39 floats
    with pytest.raises(RecordDecodeError, match="'v'"):
        layout.decode(patched(17, (2**62).to_bytes(8, "little")))
    with pytest.raises(RecordDecodeError, match="'v'"):
        layout.decode(memoryview(data[:12] + data[12:17]))  # v cut off


# --------------------------------------------------------------------------- image probing


def encode_image(fmt: str, w: int, h: int, **kw) -> bytes:
    buf = io.BytesIO()
    mode = kw.pop("mode", "RGB")
    Image.new(mode, (w, h), (10, 200, 30, 128)[: len(mode)]).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt, kw, name",
    [
        ("JPEG", {}, "jpeg"),
        ("JPEG", {"progressive": True}, "jpeg"),
        ("JPEG", {"mode": "L"}, "jpeg"),
        ("PNG", {}, "png"),
        ("PNG", {"mode": "RGBA"}, "png"),
        ("WEBP", {"quality": 50}, "webp"),
        ("WEBP", {"lossless": True}, "webp"),
        ("WEBP", {"mode": "RGBA", "quality": 50}, "webp"),
        ("WEBP", {"exif": b"Exif\0\0" + b"\0" * 20}, "webp"),
    ],
)
@pytest.mark.parametrize("w, h", [(1, 1), (7, 3), (300, 17), (16383, 1)])
def test_probe_image_reads_format_and_size(fmt, kw, name, w, h):
    data = encode_image(fmt, w, h, **kw)
    assert probe_image(data) == ImageInfo(name, h, w)
    assert probe_image(memoryview(data)) == ImageInfo(name, h, w)


def test_probe_image_rejects_non_images():
    for data in [
        b"",
        b"\xff\xd8",
        b"\xff\xd8\xff",
        b"\x89PNG\r\n\x1a\n",
        b"RIFF\0\0\0\0WEBP",
        b"GIF89a" + b"\0" * 40,
        b"<html>404 not found</html>",
        b"\0" * 100,
    ]:
        assert probe_image(data) is None, data


@FUZZ
@given(
    st.sampled_from(
        [
            b"",
            b"\xff\xd8\xff",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
            b"RIFF\0\0\0\0WEBPVP8 ",
            b"RIFF\0\0\0\0WEBPVP8L",
            b"RIFF\0\0\0\0WEBPVP8X",
        ]
    ),
    st.binary(max_size=120),
)
def test_probe_image_never_raises_on_random_bytes(prefix, rest):
    info = probe_image(prefix + rest)
    if info is not None:
        assert info.format in ("jpeg", "png", "webp")
        assert 0 <= info.height < 2**32 and 0 <= info.width < 2**32


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.sampled_from(["JPEG", "PNG", "WEBP"]), st.data())
def test_probe_image_never_raises_on_damaged_images(fmt, data):
    buf = bytearray(encode_image(fmt, 9, 4))
    for _ in range(data.draw(st.integers(0, 3))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    info = probe_image(bytes(buf[: data.draw(st.integers(0, len(buf)))]))
    assert info is None or info.format in ("jpeg", "png", "webp")
