"""PyTorch Lightning with fastload's DataLoader, run for real.

- ``Trainer.fit`` with persistent workers, stopped after a mid-epoch checkpoint and resumed
  from it in a new process: every sample seen exactly once, in the order of the
  uninterrupted run, and every process ends by itself (Lightning installs a SIGTERM handler
  that swallowed the SIGTERM multiprocessing sends workers at exit: see
  fastload/loader/exits.py). Each run is a fresh interpreter with a deadline.
- Lightning's re-instantiation of a loader (``_update_dataloader``: from ``__init__``'s
  signature and the attributes of the same names, or the arguments captured in a
  ``*_dataloader`` hook) keeps fastload's own arguments; a planned loader already has a
  DistributedSampler (its plan) and is left alone; ``Trainer.predict`` rebuilds a planned one
  around its own plan.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import fastload
from tests.childenv import run_python

pytest.importorskip("lightning")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 120
DEADLINE = 240  # seconds a run may take (Lightning's imports on a loaded 2-core machine)

_RUN = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    import fastload

    cfg = json.loads(sys.argv[1])
    L.seed_everything(cfg["seed"], verbose=False)

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            with open(cfg["log"], "a") as f:  # each step as it is trained
                f.write(json.dumps(batch["i"].tolist()) + "\\n")
            return self.layer(batch["x"]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = fastload.DataLoader(
        fastload.Dataset(cfg["path"]),
        batch_size=8,
        num_workers=2,
        persistent_workers=True,
        **cfg["loader"],
    )
    trainer = L.Trainer(
        max_epochs=cfg["epochs"],
        max_steps=cfg["max_steps"],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=cfg["ckpt"], every_n_train_steps=5, save_top_k=-1)],
    )
    trainer.fit(Model(), train_dataloaders=loader, ckpt_path=cfg.get("resume"))
    print("fitted", flush=True)
    """
)


def write_index_dataset(path: Path, n: int = N) -> Path:
    with fastload.Writer(path, {"i": "int64", "x": "float32[2]"}, shard_size=600) as w:
        for i in range(n):
            w.write({"i": i, "x": np.array([i, -i], np.float32)})
    return path


def fit(tmp: Path, name: str, **cfg) -> list[list[int]]:
    """One Lightning run in a fresh interpreter; the batches it trained on, in order."""
    log = tmp / f"{name}.jsonl"
    cfg = {"seed": 0, "epochs": 1, "max_steps": -1, "log": str(log), **cfg}
    code, out, err = run_python(_RUN, json.dumps(cfg), DEADLINE, f"the Lightning run {name}")
    assert code == 0 and "fitted" in out, err[-4000:]
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize(
    "loader", [{"shuffle": True}, {"shuffle": True, "seed": 3}], ids=["torch_order", "planned"]
)
def test_fit_stopped_mid_epoch_and_resumed_sees_every_sample_once(tmp_path, loader):
    path = str(write_index_dataset(tmp_path / "ds"))
    base = {"path": path, "loader": loader}
    whole = fit(tmp_path, "whole", ckpt=str(tmp_path / "ck-whole"), **base)
    assert sorted(i for b in whole for i in b) == list(range(N))  # one epoch: 15 batches

    first = fit(tmp_path, "first", ckpt=str(tmp_path / "ck"), max_steps=10, **base)
    assert first == whole[:10]
    checkpoint = tmp_path / "ck" / "epoch=0-step=10.ckpt"
    assert checkpoint.exists(), sorted(p.name for p in (tmp_path / "ck").iterdir())
    saved = torch.load(checkpoint, weights_only=False)["loops"]["fit_loop"]
    assert saved["state_dict"]["combined_loader"][0]["consumed"] > 0  # the loader's state

    rest = fit(tmp_path, "rest", ckpt=str(tmp_path / "ck2"), resume=str(checkpoint), **base)
    assert first + rest == whole  # every sample once, in the uninterrupted run's order
    assert sorted(i for b in first + rest for i in b) == list(range(N))


def test_a_two_epoch_fit_resumed_at_an_epoch_end(tmp_path):
    path = str(write_index_dataset(tmp_path / "ds"))
    base = {"path": path, "loader": {"shuffle": True}, "epochs": 2}
    whole = fit(tmp_path, "whole", ckpt=str(tmp_path / "ck-whole"), **base)
    assert len(whole) == 30
    first = fit(tmp_path, "first", ckpt=str(tmp_path / "ck"), max_steps=15, **base)
    checkpoint = tmp_path / "ck" / "epoch=0-step=15.ckpt"
    rest = fit(tmp_path, "rest", ckpt=str(tmp_path / "ck2"), resume=str(checkpoint), **base)
    assert first + rest == whole


# ------------------------------------------------------------------- re-instantiation


def test_reinstantiation_keeps_fastloads_arguments(tmp_path):
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    ds = fastload.Dataset(write_index_dataset(tmp_path / "ds"))
    loader = fastload.DataLoader(
        ds,
        batch_size=8,
        shuffle=True,
        num_workers=2,
        bad_samples="skip",
        worker_type="thread",
        snapshot_every_n_steps=3,
        device="cpu",
    )
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=5)
    rebuilt = _update_dataloader(loader, sampler)
    assert type(rebuilt) is fastload.DataLoader and rebuilt.fast
    assert rebuilt.sampler is sampler and rebuilt.batch_size == 8 and rebuilt.num_workers == 2
    assert (rebuilt.bad_samples, rebuilt.worker_type, rebuilt.snapshot_every_n_steps) == (
        "skip",
        "thread",
        3,
    )
    assert rebuilt.device == torch.device("cpu")
    got = [i for b in rebuilt for i in b["i"].tolist()]
    assert got == list(sampler)  # rank 1's half, in the sampler's order


def test_reinstantiation_from_the_arguments_captured_in_a_hook(tmp_path):
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DataLoader, DistributedSampler

    ds = fastload.Dataset(write_index_dataset(tmp_path / "ds"))
    with _replace_dunder_methods(DataLoader, "dataset"):  # as around a *_dataloader hook
        loader = fastload.DataLoader(ds, 4, shuffle=True, num_workers=0, bad_samples="skip")
    sampler = DistributedSampler(ds, num_replicas=3, rank=0, shuffle=False)
    rebuilt = _update_dataloader(loader, sampler)
    assert type(rebuilt) is fastload.DataLoader and rebuilt.bad_samples == "skip"
    assert [i for b in rebuilt for i in b["i"].tolist()] == list(sampler)


def test_a_planned_loader_is_left_alone_and_predict_keeps_its_plan(tmp_path):
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    ds = fastload.Dataset(write_index_dataset(tmp_path / "ds"))
    loader = fastload.DataLoader(ds, batch_size=8, seed=2, rank=0, world_size=2, num_workers=0)
    # what Lightning's data connector checks before it puts in a DistributedSampler
    assert isinstance(loader.sampler, DistributedSampler)
    batches = [b["i"].tolist() for b in loader]
    loader.set_epoch(0)
    rebuilt = _update_dataloader(loader, loader.sampler, mode=RunningStage.PREDICTING)
    assert type(rebuilt) is fastload.DataLoader
    assert [b["i"].tolist() for b in rebuilt] == batches
    assert rebuilt.batch_sampler.seen_batch_indices == batches  # Lightning's record of them
