"""A process's budget of mapped data (fastload.io.mapping.note_read): a process reading a
dataset at random, far more of it than its budget, keeps no more than about the budget of the
data's pages mapped (shards, decompressed copies; in loader workers too), reads the same
records, checked, and without a budget maps all it touched. Each run is a fresh interpreter:
what a process maps is the whole process's."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fastload
from fastload.io import mapping
from tests.childenv import run_python

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")

RECORDS, WIDTH = 12_000, 4000  # ~48 MB of records: a dozen budgets
BUDGET = 4 << 20
SLACK = 6 << 20  # what maps between two looks at the process's memory, and the headers


def row(i: np.ndarray) -> np.ndarray:
    """Record i's bytes: a function of i, so that a wrong record is seen."""
    return ((np.asarray(i)[..., None] * 7 + np.arange(WIDTH)) % 251).astype(np.uint8)


def write(path, compression: str) -> str:
    with fastload.Writer(
        path, {"i": "int64", "x": f"uint8[{WIDTH}]"}, compression=compression, overwrite=True
    ) as w:
        for a in range(0, RECORDS, 2000):
            ids = np.arange(a, a + 2000)
            w.write_columns({"i": ids, "x": row(ids)})
    return str(path)


# Run in a fresh interpreter: reads ``reads`` random records (one ``ds[i]`` each, or batches
# of 64 through get_batch), checks each, and prints the most this process had mapped of the
# files under ``under`` (the dataset and its copies' cache), sampled every ``every`` reads.
CHILD = r"""
import json, sys
import numpy as np
import fastload
from fastload.io import mapping
from tests.read.test_mapped_budget import row, mapped_under
a = json.loads(sys.argv[1])
mapping.set_mapped_budget(a["budget"])
ds = fastload.Dataset(a["path"], cache_dir=a["cache"])
rng = np.random.default_rng(0)
peak = 0
for k in range(a["reads"] // a["batch"]):
    idx = rng.integers(0, len(ds), a["batch"])
    if a["batch"] == 1:
        r = ds[int(idx[0])]
        got_i, got_x = np.array([r["i"]]), np.asarray(r["x"])[None]
    else:
        b = ds.get_batch(idx)
        got_i, got_x = b["i"], b["x"]
    if not (np.array_equal(got_i, idx) and np.array_equal(got_x, row(idx))):
        sys.exit(f"wrong records at read {k}")
    if k % a["every"] == 0:
        peak = max(peak, mapped_under(a["under"]))
print(json.dumps({"peak": peak, "releases": mapping.release_count()}))
"""


def mapped_under(root: str, pid: int | str = "self") -> int:
    """Bytes of files under ``root`` that process ``pid`` maps now (the Rss of their maps)."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            head = parts[0]
            if "-" in head and ":" not in head:
                inside = len(parts) >= 6 and parts[-1].startswith(root)
            elif inside and head == "Rss:":
                total += int(parts[1]) * 1024
    return total


def run_reader(path: str, tmp_path, budget, *, batch: int, reads: int) -> dict:
    arg = {
        "path": path,
        "cache": str(tmp_path / "cache"),
        "under": str(tmp_path),
        "budget": budget,
        "batch": batch,
        "reads": reads,
        "every": max(1, 100 // batch),
    }
    code, out, err = run_python(CHILD, json.dumps(arg), 240, "a reader")
    assert code == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("batch", [1, 64])
def test_random_reads_keep_mapped_data_within_the_budget(tmp_path, compression, batch):
    path = write(tmp_path / "ds", compression)
    reads = 3000 if batch == 1 else 6400
    bounded = run_reader(path, tmp_path, BUDGET, batch=batch, reads=reads)
    assert bounded["releases"] > 0
    assert bounded["peak"] <= BUDGET + SLACK, bounded
    # Without a budget the same reads (the copies made already) keep far more mapped: the
    # bound above is the budget's doing.
    unbounded = run_reader(path, tmp_path, None, batch=batch, reads=reads)
    assert unbounded["releases"] == 0
    assert unbounded["peak"] > 3 * (BUDGET + SLACK), unbounded


LOADER = r"""
import json, os, sys, time
import numpy as np
import fastload
from fastload.io import mapping
from tests.read.test_mapped_budget import row, mapped_under
a = json.loads(sys.argv[1])
mapping.set_mapped_budget(a["budget"])  # the workers, forked, start with this process's
ds = fastload.Dataset(a["path"], cache_dir=a["cache"])
loader = fastload.DataLoader(ds, batch_size=32, shuffle=True, seed=0, num_workers=2)
workers, peak, seen = set(), 0, []
for k, b in enumerate(loader):
    ids = b["i"].numpy()
    if not np.array_equal(b["x"].numpy(), row(ids)):
        sys.exit(f"wrong records in batch {k}")
    seen.append(ids)
    if k % 10 == 0:
        for pid in os.listdir(f"/proc/{os.getpid()}/task"):
            with open(f"/proc/{os.getpid()}/task/{pid}/children") as f:
                workers.update(int(c) for c in f.read().split())
        for w in workers:
            try:
                peak = max(peak, mapped_under(a["under"], w))
            except OSError:
                pass
seen = np.concatenate(seen)
print(json.dumps({"peak": peak, "records": len(seen), "distinct": len(set(seen.tolist())),
                  "workers": len(workers)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_loader_workers_keep_mapped_data_within_the_budget(tmp_path, compression):
    path = write(tmp_path / "ds", compression)

    def run(budget) -> dict:
        arg = {"path": path, "cache": str(tmp_path / "cache"), "under": str(tmp_path)}
        code, out, err = run_python(LOADER, json.dumps({**arg, "budget": budget}), 240, "a loader")
        assert code == 0, err[-3000:]
        got = json.loads(out.strip().splitlines()[-1])
        assert got["records"] == got["distinct"] == RECORDS and got["workers"] >= 2, got
        return got

    bounded = run(BUDGET)
    # A worker is sampled at any moment, also between a batch's gather, which maps its 32
    # rows (a fault maps 64 KiB or more around each), and the release that follows it.
    assert bounded["peak"] <= BUDGET + SLACK + 32 * (256 << 10), bounded
    unbounded = run(None)
    assert unbounded["peak"] > 2 * (BUDGET + SLACK), unbounded


def test_the_budget_is_read_from_the_environment_and_checked(monkeypatch):
    def budget_of(value: str) -> tuple[int, str, str]:
        monkeypatch.setenv("FASTLOAD_MAPPED_BUDGET", value)
        code = "from fastload.io import mapping; print(mapping.mapped_budget())"
        return run_python(code, "", 60, "an import")

    assert budget_of("3MiB")[1].strip() == str(3 << 20)
    assert budget_of("none")[1].strip() == "None"
    assert budget_of("")[1].strip() == str(mapping.DEFAULT_MAPPED_BUDGET)
    code, _, err = budget_of("lots")
    assert code != 0 and "FASTLOAD_MAPPED_BUDGET" in err
