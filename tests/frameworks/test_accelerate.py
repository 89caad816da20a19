"""Hugging Face Accelerate with fastload's DataLoader, run for real: ``Accelerator().prepare``
on 2 processes (gloo on loopback, the variables torchrun sets), each a fresh interpreter with
a deadline that must end by itself.

What ``prepare()`` does with a loader on several processes: it rebuilds it as its own
``DataLoaderShard`` (torch's DataLoader over ``loader.dataset``, with the loader's batch
sampler split among the processes: batch k to process k % world, and the sampler's generator
synchronised between them). fastload's loader in torch's order goes through that: each
process gets its share of one common order (fastload's fast path is not used then). A
planned loader (``seed=``, ``rank=`` / ``world_size=``) is this rank's share already:
split again, each process would lose half of its samples. It tells Accelerate it is
prepared, and ``prepare()`` hands it back as it is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastload
from tests.childenv import child_env
from tests.ddp.ddptools import batch_indices, free_port, write_index_dataset

pytest.importorskip("accelerate")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 96
WORLD = 2
BATCH = 4
DEADLINE = 240  # seconds for both ranks (torch's and Accelerate's imports on 2 loaded cores)

_RANK = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import fastload
    from tests.ddp.ddptools import batch_indices

    cfg = json.loads(sys.argv[1])
    ds = fastload.Dataset(cfg["path"])
    # before the Accelerator: its place comes from RANK / WORLD_SIZE, as torchrun sets them
    made_before = fastload.DataLoader(ds, batch_size=cfg["batch"], seed=3, num_workers=2)

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    loaders = {
        "torch_order": fastload.DataLoader(ds, batch_size=cfg["batch"], shuffle=True),
        "torch_order_workers": fastload.DataLoader(
            ds, batch_size=cfg["batch"], shuffle=True, num_workers=2, persistent_workers=True
        ),
        "planned": fastload.DataLoader(ds, batch_size=cfg["batch"], seed=3, num_workers=2),
        "planned_explicit": fastload.DataLoader(
            ds, batch_size=cfg["batch"], seed=3, rank=rank, world_size=accelerator.num_processes
        ),
        "planned_before": made_before,
    }
    log = {"world": accelerator.num_processes, "backend": accelerator.state.backend}
    for name, loader in loaders.items():
        prepared = accelerator.prepare(loader)
        epochs = [[batch_indices(b) for b in prepared] for _ in range(2)]
        log[name] = {"kept": prepared is loader, "type": type(prepared).__name__, "epochs": epochs}
        accelerator.wait_for_everyone()
    Path(cfg["out"], f"rank{rank}.json").write_text(json.dumps(log))
    accelerator.end_training()
    print("done", flush=True)
    """
)


def run_ranks(tmp: Path, path: Path) -> list[dict]:
    """Both ranks as torchrun would start them; each one's log."""
    port = free_port()
    cfg = json.dumps({"path": str(path), "out": str(tmp), "batch": BATCH})
    children = []
    for rank in range(WORLD):
        env = {
            **child_env(),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "LOCAL_WORLD_SIZE": str(WORLD),
        }
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", _RANK, cfg],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
        )
    results = []
    try:
        for rank, child in enumerate(children):
            try:
                out, err = child.communicate(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {rank} under Accelerate did not end within {DEADLINE} s")
            results.append((child.returncode, out, err))
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.communicate()
    for rank, (code, out, err) in enumerate(results):
        assert code == 0 and "done" in out, f"rank {rank}:\n{err[-4000:]}"
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_prepare_on_two_processes_shards_each_sample_once(tmp_path):
    path = write_index_dataset(tmp_path / "ds", N)
    logs = run_ranks(tmp_path, path)
    assert [log["world"] for log in logs] == [WORLD, WORLD]
    assert logs[0]["backend"] == "gloo"

    # torch's order: rebuilt by Accelerate, each process every other batch of one order
    for name in ("torch_order", "torch_order_workers"):
        assert [log[name]["kept"] for log in logs] == [False, False], name
        assert logs[0][name]["type"] == "DataLoaderShard"
        for epoch in range(2):
            per_rank = [log[name]["epochs"][epoch] for log in logs]
            assert [len(b) for b in per_rank] == [N // BATCH // WORLD] * WORLD
            union = [i for batches in per_rank for b in batches for i in b]
            assert sorted(union) == list(range(N)), (name, epoch)  # once, over both ranks
        assert logs[0][name]["epochs"][0] != logs[0][name]["epochs"][1]  # reshuffled

    # planned: left as it is; each rank its own share of the plan, as without Accelerate
    ds = fastload.Dataset(path)
    for rank, log in enumerate(logs):
        plain = fastload.DataLoader(ds, batch_size=BATCH, seed=3, rank=rank, world_size=WORLD)
        expected = [[batch_indices(b) for b in plain] for _ in range(2)]
        plain.close()
        assert len(expected[0]) == N // BATCH // WORLD
        for name in ("planned", "planned_explicit", "planned_before"):
            assert log[name]["kept"] and log[name]["type"] == "DataLoader", name
            assert log[name]["epochs"] == expected, (name, rank)
    for epoch in range(2):
        union = [i for log in logs for b in log["planned"]["epochs"][epoch] for i in b]
        assert sorted(union) == list(range(N))
