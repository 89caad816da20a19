"""Helpers of the DDP tests: a dataset whose records name their index, launching real ranks
(torch.distributed, gloo on loopback) and counting what an epoch served."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastload

SCHEMA = {"i": "int64", "x": "float32[2]", "s": "str"}
# Ranks are forked from the test process (it has torch imported: a rank starts in well under a
# second, where a spawned one re-imports torch for 5-15 s on a loaded 2-core machine). Set
# FASTLOAD_TEST_DDP_START=spawn to start them as fresh interpreters, as torchrun would.
START_METHOD = os.environ.get("FASTLOAD_TEST_DDP_START", "fork")


def write_index_dataset(path: Path, n: int, *, compression: str = "none") -> Path:
    """Records 0..n-1, each naming its index in every field; several shards and blocks."""
    with fastload.Writer(
        path, SCHEMA, shard_size=1200, block_size=200, compression=compression
    ) as w:
        for i in range(n):
            w.write({"i": i, "x": np.array([i, -i], np.float32), "s": f"r{i}"})
    return path


def batch_indices(batch: dict) -> list[int]:
    """The record indices of a batch, after checking its fields agree with each other."""
    idx = batch["i"].tolist()
    assert batch["x"][:, 0].tolist() == [float(i) for i in idx]
    assert batch["s"] == [f"r{i}" for i in idx]
    return idx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_step_order(per_rank: list[list[list[int]]]) -> list[int]:
    """Indices served by all ranks, step by step and rank by rank (the epoch's order)."""
    steps = len(per_rank[0])
    return [i for j in range(steps) for batches in per_rank for i in batches[j]]


def check_exactly_once(served: list[int], n: int, padding: int, dropped: int) -> None:
    """``served`` (in step order) is the epoch's order: every index once, all but the
    ``dropped`` tail, then ``padding`` repeats of the order's first samples (wrapping round
    when the dataset is smaller than the padding)."""
    kept = n - dropped
    assert len(served) == kept + padding
    assert len(set(served[:kept])) == kept and all(0 <= i < n for i in served)
    assert served[kept:] == [served[k % n] for k in range(padding)]


def rank_main(rank: int, world: int, port: int, cfg: dict[str, Any]) -> None:
    """One DDP rank: iterate the loader in lockstep (an all_reduce per batch, as DDP's gradient
    sync does: unequal batch counts would hang it) and write what it saw to a JSON file."""
    import torch
    import torch.distributed as dist

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(name, None)  # the loader must take its place from torch.distributed
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        loader = fastload.DataLoader(
            fastload.Dataset(cfg["path"]),
            batch_size=cfg["batch_size"],
            shuffle=cfg.get("shuffle", True),
            seed=cfg["seed"],
            drop_last=cfg["drop_last"],
            num_workers=cfg["workers"],
        )
        if cfg.get("state") is not None:
            loader.load_state_dict(cfg["state"])
        log: dict[str, Any] = {"epochs": [], "padding": [], "state": None}
        for epoch in cfg["epochs"]:
            loader.set_epoch(epoch)
            batches = []
            for step, batch in enumerate(loader):
                batches.append(batch_indices(batch))
                ones = torch.ones(1)
                dist.all_reduce(ones)
                assert int(ones.item()) == world
                if epoch == cfg["epochs"][0] and step == cfg.get("save_at"):
                    log["state"] = loader.state_dict()
            log["epochs"].append(batches)
            log["padding"].append([loader.padding, loader.dropped])
            log["topology"] = [loader.stats()["plan"]["rank"], loader.stats()["plan"]["world_size"]]
        counts = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([float(len(log["epochs"][0]))]))
        log["all_counts"] = [int(c.item()) for c in counts]
        loader.close()
        Path(cfg["out"], f"rank{rank}.json").write_text(json.dumps(log))
    finally:
        dist.destroy_process_group()


def launch(world: int, cfg: dict[str, Any]) -> list[dict]:
    """Run ``world`` real ranks (processes, see START_METHOD) and return each rank's log."""
    import torch.multiprocessing as tmp

    Path(cfg["out"]).mkdir(parents=True, exist_ok=True)
    tmp.start_processes(
        rank_main,
        args=(world, free_port(), cfg),
        nprocs=world,
        join=True,
        start_method=START_METHOD,
    )
    return [json.loads(Path(cfg["out"], f"rank{r}.json").read_text()) for r in range(world)]


class Plain(torch.utils.data.Dataset):
    """A plain map-style dataset (general path)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i
