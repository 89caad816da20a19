"""A dataset of 20M small fixed-size records costs each process memory that does not grow with
the record count: the shards' indexes are read where they lie (the page cache's pages, shared
by every process that maps the shard), not copied per process, and their fixed layout takes
4 bytes a record on disk. (Opening a shard used to expand its index into about 50 bytes of
private memory a record, in the main process and in each loader worker: 1 GB here.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import fastload
from fastload.format import spec

N_RECORDS = 20_000_000  # 16 bytes each (8 uint16 tokens), in 5 shards
N_SHARDS = 5
ROLLUP = Path("/proc/self/smaps_rollup")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not ROLLUP.exists(), reason="needs Linux /proc"),
]


def rollup(pid: int | str = "self") -> dict[str, float]:
    """This process's (or ``pid``'s) memory in bytes, from smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0]) * 1024
    out["Private"] = out["Private_Clean"] + out["Private_Dirty"]
    return out


def dirty_outside(pid: int, root: str) -> int:
    """Private_Dirty bytes of process ``pid`` in every map but those of files under ``root``."""
    total, outside = 0, True
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and ":" not in parts[0]:
                outside = not (len(parts) >= 6 and parts[-1].startswith(root))
            elif outside and parts[0] == "Private_Dirty:":
                total += int(parts[1]) * 1024
    return total


def tokens(a: int, b: int) -> np.ndarray:
    """Records a..b: record i holds 8 * i + (0..7), as uint16."""
    return (np.arange(a, b, dtype=np.uint64)[:, None] * 8 + np.arange(8, dtype=np.uint64)).astype(
        np.uint16
    )


@pytest.fixture(scope="module")
def many_small(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("index") / "ds"
    shard_size = N_RECORDS * 16 // N_SHARDS + 4096
    with fastload.Writer(path, {"t": "uint16[8]"}, compression="none", shard_size=shard_size) as w:
        for a in range(0, N_RECORDS, 1 << 21):
            w.write_columns({"t": tokens(a, min(a + (1 << 21), N_RECORDS))})
    return path


def test_small_fixed_records_cost_a_byte_of_index_each_on_disk(many_small):
    ds = fastload.Dataset(many_small)
    assert len(ds) == N_RECORDS and len(ds.shards) == N_SHARDS
    index = 0
    for s in ds.shards:
        with open(many_small / s.path, "rb") as f:
            f.seek(-spec.TRAILER_SIZE, os.SEEK_END)
            trailer = np.frombuffer(f.read(spec.TRAILER_SIZE), spec.TRAILER_DTYPE)[0]
        assert int(trailer["flags"]) == spec.FLAG_FIXED_SIZE | spec.FLAG_CHECKSUM_GROUPS
        blocks = int(trailer["n_blocks"])
        counts = ds.shard_reader(ds.shards.index(s)).blocks["n_records"].astype(np.int64)
        assert counts.sum() == s.records and len(counts) == blocks
        # 16-byte records, 4 to a checksum: 4 bytes per group of a block's records, 48 a block
        # (of ~65,000 records), 16 a shard: nothing more
        groups = int((-(-counts // 4)).sum())
        assert int(trailer["index_size"]) == 4 * groups + 48 * blocks + 16
        index += int(trailer["index_size"])
    assert index / N_RECORDS < 1.01


def test_reads_across_every_shard_copy_no_index(many_small):
    before = rollup()
    ds = fastload.Dataset(many_small)
    starts = ds.record_starts
    for s in range(N_SHARDS):  # one record of each shard: every index opened and checked
        i = int(starts[s]) + 12_345
        assert ds[i]["t"].tolist() == tokens(i, i + 1)[0].tolist()
    one_each = rollup()
    rng = np.random.default_rng(0)
    picks = rng.integers(0, N_RECORDS, 3000)
    for i in picks:
        assert int(ds[int(i)]["t"][0]) == (8 * int(i)) % 65536
    batch = ds.get_batch(picks[:2048])
    assert np.array_equal(batch["t"], _rows(picks[:2048]))
    after = rollup()
    # Generous bounds, a byte a record: copied per-record tables (the old way) took ~50.
    # Opening the indexes touched all their pages (hash, checks) and let them go again.
    assert one_each["Private"] - before["Private"] < N_RECORDS
    # Anonymous memory: what this process holds of its own (mapped data pages read at random
    # stay mapped until the map goes: page cache, counted as private while no other process
    # maps them, not copies).
    assert after["Anonymous"] - before["Anonymous"] < N_RECORDS


def _rows(idx: np.ndarray) -> np.ndarray:
    return (idx.astype(np.uint64)[:, None] * 8 + np.arange(8, dtype=np.uint64)).astype(np.uint16)


def test_loader_workers_copy_no_index(many_small):
    psutil = pytest.importorskip("psutil")
    ds = fastload.Dataset(many_small)
    loader = fastload.DataLoader(ds, batch_size=64, shuffle=True, seed=0, num_workers=2)
    others = {p.pid for p in psutil.Process().children()}  # servers other tests started
    dirty = []
    for k, batch in enumerate(loader):
        assert batch["t"].shape == (64, 8)
        if k == 300:  # every shard read by now, in each worker
            workers = [p for p in psutil.Process().children() if p.pid not in others]
            assert len(workers) == 2
            dirty = [dirty_outside(w.pid, str(many_small)) for w in workers]
            break
    # What a worker wrote of its own (its copy-on-write pages of the parent's heap, its
    # batches' buffers): nothing per record of the dataset. (Not the dataset's pages: just
    # written, they are dirty in the page cache, and count as a worker's Private_Dirty while
    # the other worker has let its mappings of them go, for its budget of mapped data.)
    assert dirty and max(dirty) < N_RECORDS
