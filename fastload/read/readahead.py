"""Read-ahead hints of a remote dataset turned into fetches: which blocks of which shards the
records about to be read need, skipping those at hand in plain Python (this runs for every
batch), and shards opened several at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..format.shard_reader import ShardReader
from ..io.remote import RemoteSource

__all__ = [
    "fetch_blocks",
    "fetch_records",
    "open_together",
    "groups_by_shard",
    "remote_source",
]


def remote_source(reader: ShardReader) -> RemoteSource:
    """The remote source of ``reader``'s shard (read-ahead is for remote datasets only)."""
    source = reader.source
    if not isinstance(source, RemoteSource):
        raise TypeError(f"{source.name}: read-ahead needs a remote shard")
    return source


def fetch_blocks(
    readers: Sequence[ShardReader | None], shards: list[int], blocks: list[int]
) -> int:
    """Start fetching blocks ``(shards[i], blocks[i])`` of open shards, in order, each once
    (hints repeat them), except those at hand. Returns how many were scheduled."""
    todo: dict[int, tuple[ShardReader, dict[int, None]]] = {}
    for s, b in dict.fromkeys(zip(shards, blocks)):
        reader = readers[s]
        if reader is None:  # closed meanwhile: it reopens when read
            continue
        if reader.held(b) is None and remote_source(reader).resident(b) is None:
            todo.setdefault(s, (reader, {}))[1][b] = None
    return sum(remote_source(reader).prefetch(list(bs)) for reader, bs in todo.values())


def fetch_records(
    open_reader: Callable[[int], ShardReader], groups: list[tuple[int, np.ndarray]]
) -> int:
    """Start fetching the blocks of ``(shard, records in it)`` pairs, in the order given,
    except those at hand (no file lookup for them). Returns how many were scheduled."""
    scheduled = 0
    for s, records in groups:
        reader = open_reader(s)
        source = remote_source(reader)
        held = reader.held  # blocks the reader holds (decompressed) need no fetch
        resident = source.resident
        todo = [
            b
            for b in dict.fromkeys(reader.blocks_of(records).tolist())
            if held(b) is None and resident(b) is None
        ]
        if todo:
            scheduled += source.prefetch(todo)
    return scheduled


def open_together(open_reader: Callable[[int], object], shards: list[int], threads: int) -> None:
    """Open ``shards`` in ``threads`` threads at once. Each costs a round trip or two (header;
    trailer and index), and a shuffled batch touches many shards at first: one after another,
    that alone took seconds. A shard that fails to open is left for the read that needs it to
    raise."""

    def try_open(s: int) -> None:
        try:
            open_reader(s)
        except Exception:
            pass

    with ThreadPoolExecutor(min(len(shards), threads), thread_name_prefix="fastload-open") as pool:
        list(pool.map(try_open, shards))


def groups_by_shard(
    idx: np.ndarray, shard_of: np.ndarray, starts: np.ndarray
) -> list[tuple[int, np.ndarray]]:
    """Records ``idx`` (in shards ``shard_of``) as ``(shard, records in it)`` pairs, shards in
    order of first use (the one needed first is fetched first)."""
    by_shard = np.argsort(shard_of, kind="stable")
    runs = np.split(by_shard, np.flatnonzero(np.diff(shard_of[by_shard])) + 1)
    runs.sort(key=lambda run: run[0])
    return [(int(shard_of[run[0]]), idx[run] - starts[shard_of[run[0]]]) for run in runs]
