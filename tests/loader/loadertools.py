"""Helpers of the loader tests: records that encode their index, comparison helpers, and
process/shared-memory probes for the liveness tests. A module of its own (not conftest) so that
spawned workers can import what the tests pickle (SlowDataset)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastload

SCHEMA = {"i": "int64", "x": "float32[3]", "tokens": "uint16[17]", "s": "str", "b": "bytes"}
N = 100


def record(i: int) -> dict[str, Any]:
    """Record ``i``: every field is derived from ``i``, so any mix-up is visible."""
    return {
        "i": i,
        "x": np.array([i, i + 0.5, -i], np.float32),
        "tokens": ((np.arange(17) * 31 + i * 7) % 65536).astype(np.uint16),
        "s": f"rec-{i}-é" * (i % 3),  # "" for some
        "b": bytes([i % 256]) * (i % 5),  # b"" for some
    }


def write_dataset(path: Path, n: int = N, *, compression: str = "none") -> Path:
    with fastload.Writer(
        path, SCHEMA, shard_size=1500, block_size=300, compression=compression
    ) as w:
        for i in range(n):
            w.write(record(i))
    return path


# ----------------------------------------------------------------------------- checks


def check_batch(batch: dict, indices=None) -> list[int]:
    """Assert a fast-path batch is internally consistent (every field matches its ``i``) and
    has the fast path's types; return its indices."""
    assert list(batch) == list(SCHEMA)
    idx = batch["i"]
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64 and idx.ndim == 1
    got = idx.tolist()
    n = len(got)
    assert batch["x"].dtype == torch.float32 and tuple(batch["x"].shape) == (n, 3)
    assert batch["tokens"].dtype == torch.uint16 and tuple(batch["tokens"].shape) == (n, 17)
    want = [record(i) for i in got]
    assert np.array_equal(batch["x"].numpy(), np.stack([r["x"] for r in want]).reshape(n, 3))
    assert np.array_equal(
        batch["tokens"].numpy(), np.stack([r["tokens"] for r in want]).reshape(n, 17)
    )
    assert batch["s"] == [r["s"] for r in want]
    assert batch["b"] == [r["b"] for r in want]
    if indices is not None:
        assert got == list(indices)
    return got


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Exact structural equality, as torch's own tests mean it: same types, dtypes, shapes,
    values."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            where,
            a.dtype,
            b.dtype,
            a.shape,
            b.shape,
        )
        assert torch.equal(a, b), (where, a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (where, len(a), len(b))
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]")
    else:
        assert a == b, (where, a, b)


# ----------------------------------------------------------------------------- liveness


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting for a reaper, has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids, seconds: float = 5.0) -> list[int]:
    """The pids of ``pids`` still alive after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


#: What torch's shared memory (torch_*), Python's (psm_*) or fastload could leave in /dev/shm;
#: other programs on the machine come and go there meanwhile.
_SHM_PREFIXES = ("torch_", "psm_", "fastload")


def shm_listing() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(_SHM_PREFIXES)}
    except FileNotFoundError:
        return set()


def worker_pids(loader) -> list[int]:
    return [w.pid for w in loader._pool.workers]


class SlowDataset(fastload.Dataset):
    """The index dataset, but reading a batch sleeps ``delay`` seconds; reading a batch that
    holds ``hang_on`` sleeps ``hang`` seconds (with ``releasable``, for thread workers: until
    RELEASE is set)."""

    def __init__(
        self,
        path,
        delay: float = 0.0,
        hang_on: int | None = None,
        hang: float = 3600.0,
        releasable: bool = False,
    ) -> None:
        super().__init__(path)
        self.delay, self.hang_on, self.hang = delay, hang_on, hang
        self.releasable = releasable

    def read_into(self, indices, out=None):
        if self.delay:
            time.sleep(self.delay)
        if self.hang_on is not None and self.hang_on in list(np.asarray(indices)):
            if self.releasable:
                RELEASE.wait(self.hang)
            else:
                time.sleep(self.hang)
        return super().read_into(indices, out)


RELEASE = threading.Event()  # lets a hung thread worker go at the end of a test


def wait_for(probe, seconds: float):
    """Poll ``probe`` until it returns a falsy value or ``seconds`` pass; its last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if not value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def damage(src: Path, dst: Path, records, whole_block: bool = False) -> Path:
    """A copy of dataset ``src`` in which ``records`` (dataset indices) fail their checksum
    (``whole_block``: the compressed block holding each fails instead)."""
    from tests.format.formattools import parse_shard

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    start = 0
    for shard in manifest["shards"]:
        path = dst / shard["path"]
        data = bytearray(path.read_bytes())
        parsed = parse_shard(bytes(data))
        for r in records:
            if start <= r < start + shard["records"]:
                rec = parsed["records"][r - start]
                block = parsed["blocks"][rec["block"]]
                at = (
                    block["stored_size"] // 2 if whole_block else rec["offset"] + rec["length"] // 2
                )
                data[block["offset"] + at] ^= 0xFF
        path.write_bytes(bytes(data))
        start += shard["records"]
    return dst
