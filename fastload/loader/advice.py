"""Warnings the loader gives once, when it is built, about a setting that works but costs
what was probably not meant: every DDP rank reading the whole dataset, or compressed blocks
decompressed again and again."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..plan.topology import current_topology
from ..read.contract import Storage
from ..read.dataset import Dataset
from ..read.mix import Mix
from ..utils import format_size
from .planned_order import Planner

__all__ = ["warn_if_unsplit", "warn_about_block_cache"]


def warn_about_block_cache(
    dataset: Any, planner: Planner | None, sampler: Any, processes: int
) -> None:
    """Warn once where the order asks compressed blocks to be decompressed again: records
    drawn at random, or a Mix's windows, past what the block caches of ``processes`` (those
    that share the blocks out) hold."""
    if (
        planner is not None
        and planner.shuffle
        and planner.mode == "global"
        or isinstance(sampler, torch.utils.data.RandomSampler)
    ):
        _warn_if_rereading(dataset, processes)
    elif planner is not None and planner.mix_blocks is not None and planner.window is not None:
        _warn_if_windows_overflow(dataset, planner.window, processes)


def _compressed(dataset: Any) -> list[Storage]:
    """The storage of each fastload dataset in ``dataset`` (a Mix's too) whose blocks are
    mostly compressed (see :attr:`Storage.compressed`); none for another kind of dataset."""
    if not isinstance(dataset, (Dataset, Mix)):
        return []
    return [s for s in dataset.storage() if s.compressed]


def warn_if_unsplit(dataset: Any) -> None:
    """Under DDP, torch's own order (no sampler given, no seed=) hands every rank the whole
    dataset, as torch's DataLoader does; it is rarely what was meant, so say it, once."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return  # an iterable dataset splits itself, or not, as it likes
    try:
        world = current_topology().world_size
    except ValueError:
        return  # a malformed WORLD_SIZE: the planned order's own error names it
    if world > 1:
        warnings.warn(
            f"fastload.DataLoader: this is one of {world} ranks (torch.distributed "
            "or WORLD_SIZE), but nothing splits the dataset among them: every rank "
            "reads all of it, as with torch's DataLoader without a "
            "DistributedSampler. Pass seed= to have the loader split it (each "
            "sample once per epoch over all ranks, resumable), or a "
            "DistributedSampler.",
            stacklevel=3,
        )


def _warn_if_rereading(dataset: Any, processes: int = 1) -> None:
    """Records drawn at random from compressed blocks decompress their whole block each,
    once the dataset's decompressed size passes what the ``processes`` that share its blocks
    out keep (``block_cache`` each): say so, once, with the ways out."""
    for s in _compressed(dataset):
        raw, limit = s.raw_bytes, s.block_cache * processes
        if raw <= limit or s.copied:
            continue
        per_block = s.records / max(1, s.blocks)
        ways = [
            "shuffle='block' (each block read once per epoch)",
            "a dataset converted with --compression none (nothing to decompress)",
            "a larger block_cache",
        ]
        if s.copy_limit:  # copies are kept, but they do not all fit
            ways.append(
                f"a cache_limit of at least {format_size(raw)} (now {format_size(s.copy_limit)}: "
                "each block decompressed once, then read from its copy on local disk)"
            )
        warnings.warn(
            f"fastload.DataLoader: {s.name} is read in a random order from "
            f"compressed blocks ({format_size(raw)} decompressed, more than "
            f"{_kept(limit, processes)}: Dataset(block_cache=)), "
            f"so about {1 - limit / raw:.0%} of the records read will decompress "
            f"their whole block (~{per_block:,.0f} records) again. Instead: "
            f"{'; '.join(ways)}.",
            stacklevel=4,
        )


def _kept(limit: int, processes: int) -> str:
    """What the block caches of ``processes`` that share the blocks out hold, in words."""
    if processes == 1:
        return f"the {format_size(limit)} each process keeps"
    return f"the {format_size(limit)} {processes} worker processes keep, each its share"


def _warn_if_windows_overflow(mix: Mix, window: int, processes: int = 1) -> None:
    """A Mix in block order reads a stratum's draws of each dataset from about two windows
    of its blocks; a compressed dataset whose block caches (those of the ``processes`` that
    share its blocks out) hold fewer decompresses some of them again. Say so, once."""
    for s in _compressed(mix):
        raw, limit = s.raw_bytes, s.block_cache * processes
        need = min(raw, 2 * window * raw / max(1, s.blocks))
        if need <= limit or s.copied:
            continue
        warnings.warn(
            f"fastload.DataLoader: {s.name} is read in block order from compressed "
            f"blocks, about {format_size(need)} of them (2 windows of {window}) at a "
            f"time, more than {_kept(limit, processes)} "
            "(Dataset(block_cache=)): some will be decompressed again. Instead: a "
            "larger block_cache, or a smaller block_window.",
            stacklevel=4,
        )
