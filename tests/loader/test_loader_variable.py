"""Variable-length array fields in batches (``DataLoader(variable=...)``): padded to a fixed
length in the slab (plus lengths), padded to the batch's longest, packed values plus offsets,
or token sequences packed into rows; each checked against the dataset's own records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fastload

N = 120
SCHEMA = {"id": "int64", "tokens": "int32[?]", "points": "float32[?,3]", "text": "str"}


def record(i: int) -> dict:
    n = (i * 7) % 23  # 0..22 items, some records empty
    return {
        "id": i,
        "tokens": (np.arange(n, dtype=np.int32) * 3 + i),
        "points": np.full((i % 5, 3), i, np.float32),
        "text": f"r{i}",
    }


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("var") / "ds"
    with fastload.Writer(path, SCHEMA, shard_size=4000, block_size=1000, compression="none") as w:
        for i in range(N):
            w.write(record(i))
    return path


def epoch(path, variable, **kwargs) -> list[dict]:
    loader = fastload.DataLoader(fastload.Dataset(path), batch_size=16, variable=variable, **kwargs)
    return list(loader)


CONFIGS = [
    dict(num_workers=0),
    dict(num_workers=2),
    dict(num_workers=2, worker_type="thread"),
    dict(num_workers=2, shuffle=True, seed=1, persistent_workers=True),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_pad_to_a_fixed_length_fills_the_slab_with_values_and_lengths(ds_path, kwargs):
    batches = epoch(ds_path, {"tokens": fastload.Pad(24, value=-1)}, **kwargs)
    seen = []
    for b in batches:
        assert list(b) == ["id", "tokens", "tokens_lengths", "points", "text"]
        assert b["tokens"].shape == (len(b["id"]), 24) and b["tokens"].dtype == torch.int32
        assert b["tokens_lengths"].dtype == torch.int64
        for row, i in enumerate(b["id"].tolist()):
            want = record(i)["tokens"]
            assert b["tokens_lengths"][row] == len(want)
            np.testing.assert_array_equal(b["tokens"][row, : len(want)].numpy(), want)
            assert (b["tokens"][row, len(want) :] == -1).all()
            assert isinstance(b["points"], list) and b["text"][row] == f"r{i}"
        seen += b["id"].tolist()
    assert sorted(seen) == list(range(N))


def test_a_record_longer_than_the_pad_raises_naming_it_unless_truncated(ds_path):
    longest = max(range(N), key=lambda i: len(record(i)["tokens"]))
    for workers in (0, 2):
        with pytest.raises(
            ValueError,
            match=r"field 'tokens' of dataset record 3 has 21 "
            r"items, more than Pad\(length=20\)",
        ):
            epoch(ds_path, {"tokens": fastload.Pad(20)}, num_workers=workers)
    batches = epoch(ds_path, {"tokens": fastload.Pad(20, truncate=True)}, num_workers=2)
    b = next(b for b in batches if longest in b["id"].tolist())
    row = b["id"].tolist().index(longest)
    assert b["tokens_lengths"][row] == 20
    np.testing.assert_array_equal(b["tokens"][row].numpy(), record(longest)["tokens"][:20])


@pytest.mark.parametrize("kwargs", CONFIGS[:2])
def test_pad_to_the_longest_in_each_batch(ds_path, kwargs):
    for b in epoch(ds_path, {"points": fastload.Pad(value=7.5)}, **kwargs):
        ids = b["id"].tolist()
        longest = max(len(record(i)["points"]) for i in ids)
        assert b["points"].shape == (len(ids), longest, 3)
        for row, i in enumerate(ids):
            want = record(i)["points"]
            assert b["points_lengths"][row] == len(want)
            np.testing.assert_array_equal(b["points"][row, : len(want)].numpy(), want)
            assert (b["points"][row, len(want) :] == 7.5).all()


@pytest.mark.parametrize("kwargs", CONFIGS[:2])
def test_packed_values_and_offsets(ds_path, kwargs):
    for b in epoch(ds_path, {"tokens": fastload.Packed(), "points": fastload.Packed()}, **kwargs):
        ids = b["id"].tolist()
        assert list(b) == ["id", "tokens", "tokens_offsets", "points", "points_offsets", "text"]
        for name in ("tokens", "points"):
            offsets = b[f"{name}_offsets"].tolist()
            assert len(offsets) == len(ids) + 1 and offsets[-1] == len(b[name])
            for row, i in enumerate(ids):
                np.testing.assert_array_equal(
                    b[name][offsets[row] : offsets[row + 1]].numpy(), record(i)[name]
                )
        nested = torch.nested.nested_tensor_from_jagged(b["points"], b["points_offsets"])
        assert nested.size(0) == len(ids)


@pytest.mark.parametrize("kwargs", CONFIGS[:2])
def test_token_sequences_packed_into_rows(ds_path, kwargs):
    for b in epoch(ds_path, {"tokens": fastload.PackRows(10, value=-5)}, **kwargs):
        ids = b["id"].tolist()
        want = np.concatenate([record(i)["tokens"] for i in ids])
        rows = -(-len(want) // 10)
        assert b["tokens"].shape == (rows, 10)
        flat = b["tokens"].reshape(-1).numpy()
        np.testing.assert_array_equal(flat[: len(want)], want)
        assert (flat[len(want) :] == -5).all()
        offsets = b["tokens_offsets"].tolist()  # each sequence's start: cu_seqlens
        for row, i in enumerate(ids):
            np.testing.assert_array_equal(
                flat[offsets[row] : offsets[row + 1]], record(i)["tokens"]
            )


def test_skipped_records_leave_padded_rows_in_order(ds_path, tmp_path):
    """bad_samples='skip' drops a record that fails its checksum: the padded rows and lengths
    after it move up with the rest of the batch."""
    import shutil

    from fastload.errors import CorruptRecordError

    bad = tmp_path / "bad"
    shutil.copytree(ds_path, bad)
    ds = fastload.Dataset(bad)
    reader = ds.shard_reader(0)
    rec = reader.index.entries()[5]
    at = int(reader.blocks[int(rec["block"])]["offset"]) + int(rec["offset"]) + 10
    shard = bad / ds.manifest.shards[0].path
    data = bytearray(shard.read_bytes())
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError):
        epoch(bad, {"tokens": fastload.Pad(24)})
    for workers in (0, 2):
        batches = epoch(
            bad,
            {"tokens": fastload.Pad(24), "points": fastload.Pad()},
            num_workers=workers,
            bad_samples=fastload.SkipBadSamples(max_fraction=0.5),
        )
        ids = [i for b in batches for i in b["id"].tolist()]
        assert ids == [i for i in range(N) if i != 5]
        for b in batches:
            for row, i in enumerate(b["id"].tolist()):
                want = record(i)["tokens"]
                assert b["tokens_lengths"][row] == len(want)
                np.testing.assert_array_equal(b["tokens"][row, : len(want)].numpy(), want)
                assert b["points_lengths"][row] == len(record(i)["points"])


def test_variable_argument_errors(ds_path, tmp_path):
    ds = fastload.Dataset(ds_path)

    def build(variable, **kwargs):
        return fastload.DataLoader(ds, batch_size=4, variable=variable, **kwargs)

    with pytest.raises(ValueError, match="'nope' is not a field"):
        build({"nope": fastload.Pad()})
    for name in ("id", "text"):
        with pytest.raises(ValueError, match="first dimension only is variable"):
            build({name: fastload.Pad()})
    with pytest.raises(ValueError, match="PackRows needs a 1-D field"):
        build({"points": fastload.PackRows(8)})
    for value in (0.5, 2**40, "x"):
        with pytest.raises(ValueError, match=r"the pad value .* of 'tokens' is not a int32"):
            build({"tokens": fastload.Pad(value=value)})
    build({"points": fastload.Pad(value=0.5)})  # a float field takes it
    with pytest.raises(TypeError, match="must be fastload.Pad, Packed or PackRows"):
        build({"tokens": "pad"})
    with pytest.raises(ValueError, match="cannot be combined"):
        build({"tokens": fastload.Pad()}, transform=lambda s: s)
    with pytest.raises(ValueError, match="needs a fastload.Dataset"):
        build({"tokens": fastload.Pad()}, collate_fn=lambda x: x)
    for bad in (
        lambda: fastload.Pad(0),
        lambda: fastload.Pad(truncate=True),
        lambda: fastload.PackRows(0),
        lambda: fastload.Pad(2.5),
    ):
        with pytest.raises(ValueError):
            bad()
    with fastload.Writer(
        tmp_path / "clash", {"tokens": "int32[?]", "tokens_lengths": "int64"}
    ) as w:
        w.write({"tokens": np.arange(3, dtype=np.int32), "tokens_lengths": 3})
    with pytest.raises(ValueError, match="would add 'tokens_lengths'"):
        fastload.DataLoader(
            fastload.Dataset(tmp_path / "clash"), variable={"tokens": fastload.Pad()}
        )


def test_tokenized_jsonl_converted_and_packed_into_rows(tmp_path):
    """The usual pretraining input: JSON Lines of token id lists, converted (lists of ints
    become int64[?]) and read as rows of packed tokens with their sequences' offsets."""
    import json

    from fastload.convert import convert

    docs = [list(range(100 * i, 100 * i + 3 + (i * 5) % 17)) for i in range(40)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"input_ids": d}) + "\n" for d in docs))
    convert(tmp_path / "docs.jsonl", tmp_path / "ds", progress=False)
    loader = fastload.DataLoader(
        fastload.Dataset(tmp_path / "ds"),
        batch_size=8,
        num_workers=2,
        variable={"input_ids": fastload.PackRows(16)},
    )
    flat = []
    for b in loader:
        assert b["input_ids"].shape[1] == 16 and b["input_ids"].dtype == torch.int64
        offsets = b["input_ids_offsets"].tolist()
        flat += [b["input_ids"].reshape(-1)[a:z].tolist() for a, z in zip(offsets, offsets[1:])]
    assert flat == docs


def test_ragged_rows_taken_in_any_order():
    from fastload.loader.variable import Ragged

    arrays = [np.arange(n, dtype=np.int32) + 10 * n for n in (3, 0, 5, 1)]
    ragged = Ragged.of([arrays[0], None, arrays[2], arrays[3]], np.zeros(0, np.int32))
    assert ragged.lengths.tolist() == [3, 0, 5, 1] and len(ragged.values) == 9
    assert ragged.offsets().tolist() == [0, 3, 3, 8, 9]
    taken = ragged[np.array([3, 0, 2])]
    assert taken.lengths.tolist() == [1, 3, 5]
    np.testing.assert_array_equal(taken.values, np.concatenate([arrays[3], arrays[0], arrays[2]]))
    empty = ragged[np.array([], np.int64)]
    assert len(empty) == 0 and len(empty.values) == 0
