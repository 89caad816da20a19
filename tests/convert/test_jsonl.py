"""The jsonl source: schema inference, line-boundary tasks, bad lines named by number."""

from __future__ import annotations

import gzip
import json

import pytest

from fastload import ConvertError, SourceRecordError
from fastload.convert import convert
from fastload.convert.jsonl import JsonlSource, split_lines

from .conftest import dir_bytes, read_all


def row(i: int) -> dict:
    return {
        "idx": i,
        "score": i / 2,
        "ok": i % 3 == 0,
        "name": f"n{i}",
        "tags": ["t"] * (i % 3),
        "extra": {"i": i},
    }


def write_jsonl(path, rows, *, blank_every: int = 0) -> None:
    lines = []
    for i, r in enumerate(rows):
        lines.append(r if isinstance(r, str) else json.dumps(r))
        if blank_every and i % blank_every == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def test_round_trip_and_inferred_types(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [row(i) for i in range(50)], blank_every=7)
    source = JsonlSource(str(tmp_path / "a.jsonl"), shard_size=1 << 20)
    assert source.schema().to_dict() == {
        "idx": "int64",
        "score": "float64",
        "ok": "bool",
        "name": "str",
        "tags": "json",
        "extra": "json",
    }
    result = convert(tmp_path / "a.jsonl", tmp_path / "out", progress=False, shard_size=700)
    assert result.tasks > 3 and result.records == 50
    assert read_all(tmp_path / "out") == [row(i) for i in range(50)]


def test_int_and_float_mix_is_float_and_optional_keys_are_json(tmp_path):
    rows = [{"x": 1, "y": "a"}, {"x": 2.5}, {"x": 3, "y": None}]
    write_jsonl(tmp_path / "m.jsonl", rows)
    source = JsonlSource(str(tmp_path / "m.jsonl"), shard_size=1 << 20)
    assert source.schema().to_dict() == {"x": "float64", "y": "json"}
    convert(tmp_path / "m.jsonl", tmp_path / "out", progress=False)
    assert read_all(tmp_path / "out") == [
        {"x": 1.0, "y": "a"},
        {"x": 2.5, "y": None},
        {"x": 3.0, "y": None},
    ]


def test_lists_of_numbers_are_variable_length_arrays(tmp_path):
    """Token ids and embeddings in JSON lists become int64[?] / float64[?] fields (the loader
    can pad or pack them), not json; other lists stay json."""
    import numpy as np

    rows = [
        {
            "ids": list(range(i % 4)),
            "emb": [0.5 * i, i],
            "tags": [],
            "mixed": [1, "a"],
            "nested": [[i]],
        }
        for i in range(12)
    ]
    write_jsonl(tmp_path / "v.jsonl", rows)
    source = JsonlSource(str(tmp_path / "v.jsonl"), shard_size=1 << 20)
    assert source.schema().to_dict() == {
        "ids": "int64[?]",
        "emb": "float64[?]",
        "tags": "json",
        "mixed": "json",
        "nested": "json",
    }
    convert(tmp_path / "v.jsonl", tmp_path / "out", progress=False)
    got = read_all(tmp_path / "out")
    for r, want in zip(got, rows):
        assert r["ids"].dtype == np.int64 and r["ids"].tolist() == want["ids"]
        assert r["emb"].dtype == np.float64 and r["emb"].tolist() == want["emb"]
        assert r["tags"] == [] and r["nested"] == want["nested"]


@pytest.mark.parametrize(
    "value,why",
    [
        (["a"], "a list of other values"),
        ([1.5], "a list of numbers"),
        (3, "int"),
        ([True], "a list of other values"),
        ([2**70], "a list of other values"),
    ],
)
def test_a_later_line_whose_list_breaks_the_array_type_is_named(tmp_path, value, why):
    rows = [{"ids": [1, 2]}] * 3 + [{"ids": value}]
    write_jsonl(tmp_path / "b.jsonl", rows)
    with pytest.raises(
        SourceRecordError,
        match=rf"b.jsonl line 4: key 'ids' is {why}, but "
        r"the schema .* says int64\[\?\]",
    ):
        convert(tmp_path / "b.jsonl", tmp_path / "out", progress=False, infer_lines=3)
    result = convert(
        tmp_path / "b.jsonl", tmp_path / "out2", progress=False, infer_lines=3, skip_bad=True
    )
    assert result.records == 3 and result.skipped == 1


def test_tasks_split_on_line_boundaries(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [row(i) for i in range(100)])
    pieces = split_lines(str(tmp_path / "a.jsonl"), 500)
    data = (tmp_path / "a.jsonl").read_bytes()
    assert pieces[0].start == 0 and pieces[-1].stop == len(data) and len(pieces) > 5
    for a, b in zip(pieces, pieces[1:]):
        assert a.stop == b.start and data[b.start - 1 : b.start] == b"\n"


def test_workers_give_identical_output(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "1.jsonl", [row(i) for i in range(60)])
    write_jsonl(tmp_path / "in" / "2.jsonl", [row(i) for i in range(60, 70)])
    for w in (1, 2):
        convert(tmp_path / "in", tmp_path / f"o{w}", workers=w, shard_size=900, progress=False)
    assert len(dir_bytes(tmp_path / "o1")) > 3
    assert dir_bytes(tmp_path / "o1") == dir_bytes(tmp_path / "o2")
    assert [r["idx"] for r in read_all(tmp_path / "o2")] == list(range(70))


@pytest.mark.parametrize(
    "bad, why",
    [
        (
            '{"idx": 1, "score": 0.5, "ok": true, "name": "x", "tags": [], "extra": {} ',
            "invalid JSON",
        ),
        (
            '{"idx": "7", "score": 0.5, "ok": true, "name": "x", "tags": [], "extra": {}}',
            "key 'idx' is str, but the schema .* says int64",
        ),
        (
            '{"idx": 7, "score": 0.5, "ok": true, "name": "x", "tags": []}',
            r"missing keys \['extra'\]",
        ),
        (
            '{"idx": 7, "score": 0.5, "ok": true, "name": "x", "tags": [], "extra": 1, "new": 2}',
            r"unknown keys \['new'\]",
        ),
        (
            '{"idx": 99999999999999999999, "score": 0.5, "ok": true, "name": "x", "tags": [], '
            '"extra": 1}',
            "key 'idx': 99999999999999999999 does not fit in int64",
        ),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_line_is_named_by_line_number(tmp_path, bad, why):
    lines = [json.dumps(row(i)) for i in range(40)]
    lines[33] = bad
    write_jsonl(tmp_path / "b.jsonl", lines)
    with pytest.raises(SourceRecordError, match=rf"b.jsonl line 34: {why}"):
        # Small tasks: line 34 is not in the first one, so its number must be counted.
        convert(
            tmp_path / "b.jsonl", tmp_path / "out", progress=False, shard_size=300, infer_lines=10
        )
    assert not (tmp_path / "out" / "manifest.json").exists()
    result = convert(
        tmp_path / "b.jsonl",
        tmp_path / "out",
        progress=False,
        shard_size=300,
        infer_lines=10,
        skip_bad=True,
        workers=2,
    )
    assert result.skipped == 1 and result.records == 39
    assert [r["idx"] for r in read_all(tmp_path / "out")] == [i for i in range(40) if i != 33]


def test_gzip_input(tmp_path):
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(row(i)) + "\n" for i in range(20))
    convert(tmp_path / "z.jsonl.gz", tmp_path / "out", progress=False)
    assert read_all(tmp_path / "out") == [row(i) for i in range(20)]


def test_no_objects_is_an_error(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n[1]\n")
    with pytest.raises(ConvertError, match="no JSON object lines"):
        convert(tmp_path / "e.jsonl", tmp_path / "out", progress=False)


def test_invalid_key_name_is_an_error(tmp_path):
    write_jsonl(tmp_path / "k.jsonl", [{"a b": 1}])
    with pytest.raises(ConvertError, match="'a b' cannot be a field name"):
        convert(tmp_path / "k.jsonl", tmp_path / "out", progress=False)
