"""Local raw data larger than a process's budget of mapped data is gathered with pread from the
shards' files (fastload.io.files, _core.RecordMap.read) instead of from their maps: the same
records, checked, with nothing mapped; data within the budget stays mapped; a damaged record is
reported by name; a shard replaced since it was mapped, or more shards than the process may
keep open, keep the maps."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest

import fastload
from fastload.errors import CorruptRecordError
from fastload.io import mapping
from fastload.io.files import OpenFiles, files_allowed
from tests.childenv import run_python

RECORDS, WIDTH = 6000, 120  # ~0.8 MB of records in 6 shards
BUDGET = 64 << 10  # far less than the data


def row(i, width: int = WIDTH) -> np.ndarray:
    """Record i's bytes, a function of i, so that a wrong record is seen."""
    return ((np.asarray(i)[..., None] * 7 + np.arange(width)) % 251).astype(np.uint8)


# "tokens": one field, the whole record (read straight into its row); "fields": an id and
# the bytes (a run read, then copied field by field); "small": the same in 16 bytes, which
# share their checksums 4 by 4 (a record is read and checked with its group).
WIDTHS = {"tokens": WIDTH, "fields": WIDTH, "small": 8}


def write(path, schema: str, shards: int = 6) -> str:
    width = WIDTHS[schema]
    spec = {"x": f"uint8[{width}]"}
    if schema != "tokens":
        spec = {"i": "int64", **spec}
    per_shard = -(-RECORDS // shards) * (width + 8)
    with fastload.Writer(
        path, spec, compression="none", shard_size=per_shard, block_size=8 << 10, overwrite=True
    ) as w:
        ids = np.arange(RECORDS)
        x = row(ids, width)
        w.write_columns({"x": x} if schema == "tokens" else {"i": ids, "x": x})
    return str(path)


@pytest.fixture
def budget():
    """A small mapped budget for the test, the process's own restored after."""
    before = mapping.mapped_budget()
    mapping.set_mapped_budget(BUDGET)
    yield BUDGET
    mapping.set_mapped_budget(before)


def gather(g, idx: np.ndarray, names: tuple, width: int = WIDTH) -> dict:
    """Records ``idx`` gathered by ``g`` into new arrays of fields ``names``."""
    empty = {"i": np.zeros(len(idx), np.int64), "x": np.zeros((len(idx), width), np.uint8)}
    views = {name: empty[name] for name in names}
    assert g.gather(idx.astype(np.int64), views)
    return views


@pytest.mark.parametrize("schema", ["tokens", "fields", "small"])
def test_data_past_the_budget_is_read_with_pread_and_reads_the_same(tmp_path, budget, schema):
    ds = fastload.Dataset(write(tmp_path / "ds", schema))
    assert len(ds.shards) == 6
    assert ds.shard_reader(0).index.group == (4 if schema == "small" else 1)
    names = ("x",) if schema == "tokens" else ("i", "x")
    width = WIDTHS[schema]
    g = ds.fast_gather(names)
    assert g is not None and g.files is not None and g.files.complete
    releases = mapping.release_count()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, RECORDS, 16) for _ in range(300)]
    batches += [np.arange(100, 2100), np.arange(RECORDS - 3, RECORDS), np.array([5, 5, 4, 5])]
    for idx in batches:
        got = gather(g, idx, names, width)
        assert np.array_equal(got["x"], row(idx, width))
        if schema != "tokens":
            assert got["i"].tolist() == idx.tolist()
    assert mapping.release_count() == releases  # nothing mapped, nothing to let go


def test_data_within_the_budget_stays_mapped(tmp_path):
    path = write(tmp_path / "ds", "tokens")
    before = mapping.mapped_budget()
    try:
        for bound in (None, 64 << 20):
            mapping.set_mapped_budget(bound)
            g = fastload.Dataset(path).fast_gather(("x",))
            assert g is not None and g.files is None
            idx = np.array([3, 4000, 17])
            assert np.array_equal(gather(g, idx, ("x",))["x"], row(idx))
    finally:
        mapping.set_mapped_budget(before)


@pytest.mark.parametrize("schema", ["fields", "small"])
def test_a_damaged_record_read_with_pread_is_reported_by_name(tmp_path, budget, schema):
    path = write(tmp_path / "ds", schema)
    width = WIDTHS[schema]
    ds = fastload.Dataset(path)
    victim = 4321
    starts = np.cumsum([0] + [s.records for s in ds.shards])
    k = int(np.searchsorted(starts, victim, side="right")) - 1
    shard, in_shard = ds.shards[k], victim - int(starts[k])
    file = os.path.join(path, shard.path)
    data = bytearray(open(file, "rb").read())
    record = np.int64(victim).tobytes() + row(victim, width).tobytes()  # its fields in order
    at = data.find(record)
    assert at > 0 and data.find(record, at + 1) < 0
    data[at + len(record) - 2] ^= 0xFF  # a byte of its own
    with open(file, "r+b") as f:  # in place: the file the dataset maps and opens
        f.write(data)
    ds = fastload.Dataset(path)
    g = ds.fast_gather(("i", "x"))
    assert g is not None and g.files is not None
    idx = np.array([1, victim, 2], np.int64)
    views = {"i": np.zeros(3, np.int64), "x": np.zeros((3, width), np.uint8)}
    assert not g.gather(idx, views)  # the general path then names the record
    with pytest.raises(CorruptRecordError, match=rf"{shard.path}: record {in_shard} ") as e:
        ds.read_into(idx, out=views)
    if schema == "small":  # checked with its group: the group is named too
        first = in_shard // 4 * 4  # (blocks of 8 KiB hold a multiple of 4 records)
        assert f"one checksum with records {first}..{first + 3})" in str(e.value)
    loader = fastload.DataLoader(ds, batch_size=16, sampler=[victim - 3 + k for k in range(16)])
    with pytest.raises(CorruptRecordError, match="failed its checksum"):
        next(iter(loader))


def test_a_shard_replaced_since_it_was_mapped_keeps_the_maps(tmp_path, budget):
    path = write(tmp_path / "ds", "tokens")
    ds = fastload.Dataset(path)
    ds.block_numbers(np.arange(0, RECORDS, 500))  # every shard open (mapped) here
    first = os.path.join(path, ds.shards[0].path)
    shutil.copyfile(first, first + ".new")
    os.replace(first + ".new", first)  # the same bytes, another file
    g = ds.fast_gather(("x",))
    assert g is not None and g.files is None
    idx = np.array([0, 999, 5999])
    assert np.array_equal(gather(g, idx, ("x",))["x"], row(idx))


def test_open_files_refuse_a_path_that_is_not_the_file_named(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a"), b.write_bytes(b"b")
    ident = [(st.st_dev, st.st_ino) for st in (os.stat(a), os.stat(b))]
    allowed = files_allowed()
    files = OpenFiles([str(a), str(b), str(tmp_path / "gone")], [ident[0], ident[0], ident[1]])
    assert files.fds[0] >= 0 and files.fds[1] == -1 and files.fds[2] == -1 and not files.complete
    assert os.pread(int(files.fds[0]), 1, 0) == b"a"
    assert files_allowed() == allowed - 1  # one of the process's share taken
    fd = int(files.fds[0])
    files.close()
    assert files_allowed() == allowed and (files.fds == -1).all()
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError):
        OpenFiles([str(a)], [])


# In a fresh interpreter whose limit of open files is 64: readers may hold 16 open, so a
# dataset of 6 shards reads with pread, and then one of more than the 10 left keeps its maps;
# both read the right records.
CHILD = r"""
import json, resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
import fastload
from fastload.io import mapping
from fastload.io.files import files_allowed
from tests.read.test_file_reads import row, RECORDS
mapping.set_mapped_budget(64 << 10)
out = {"allowed": files_allowed()}
for path in sys.argv[1].split(","):
    ds = fastload.Dataset(path)
    g = ds.fast_gather(("x",))
    idx = np.random.default_rng(0).integers(0, RECORDS, 64).astype(np.int64)
    views = {"x": np.zeros((64, row(0).shape[-1]), np.uint8)}
    ok = g.gather(idx, views) and np.array_equal(views["x"], row(idx))
    out[str(len(ds.shards))] = {"pread": g.files is not None, "right": bool(ok)}
print(json.dumps(out))
"""


def test_more_shards_than_the_process_may_keep_open_keep_the_maps(tmp_path):
    few = write(tmp_path / "few", "tokens", shards=6)
    many = write(tmp_path / "many", "tokens", shards=30)
    assert len(fastload.Dataset(many).shards) > 16
    code, out, err = run_python(CHILD, f"{few},{many}", 120, "a reader")
    assert code == 0, err[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got["allowed"] == 16
    n_many = str(len(fastload.Dataset(many).shards))
    assert got["6"] == {"pread": True, "right": True}
    assert got[n_many] == {"pread": False, "right": True}
    assert files_allowed() >= 16  # this process's own limit is larger


def test_threads_share_one_pread_gather(tmp_path, budget):
    ds = fastload.Dataset(write(tmp_path / "ds", "fields"))
    g = ds.fast_gather(("i", "x"))
    assert g is not None and g.files is not None
    wrong: list = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(200):
            idx = rng.integers(0, RECORDS, 32)
            got = gather(g, idx, ("i", "x"))
            if got["i"].tolist() != idx.tolist() or not np.array_equal(got["x"], row(idx)):
                wrong.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and not wrong


def test_a_loader_over_data_past_the_budget_gives_every_record_once(tmp_path, budget, monkeypatch):
    monkeypatch.setenv("FASTLOAD_MAPPED_BUDGET", str(BUDGET))  # workers started afresh too
    ds = fastload.Dataset(write(tmp_path / "ds", "fields"))
    loader = fastload.DataLoader(ds, batch_size=16, shuffle=True, seed=0, num_workers=2)
    seen = []
    for b in loader:
        assert np.array_equal(b["x"].numpy(), row(b["i"].numpy()))
        seen += b["i"].tolist()
    assert sorted(seen) == list(range(RECORDS))
