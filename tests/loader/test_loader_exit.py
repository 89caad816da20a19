"""A clean exit, always (docs/reliability.md C7, C10): a script that leaves a loader's workers
running (persistent ones mid-epoch, thread workers, torch's iterators, DALI) ends by itself at
interpreter exit, or on ``del``, whatever signal handlers it installed (a SIGTERM handler
that swallows the signal, as Lightning's does, kept multiprocessing's exit join waiting
forever); no process is left. Each script runs in a fresh interpreter with a deadline.
Workers run none of the handlers they inherit."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest
import torch

import fastload
from fastload.errors import WorkerDiedError
from tests.childenv import run_python

from .loadertools import alive, check_batch, wait_gone

pytestmark = pytest.mark.timeout(180)

DEADLINE = 60  # seconds a script may take, its imports on a loaded 2-core machine included

_SCRIPT = textwrap.dedent(
    """
    import gc, json, multiprocessing, os, signal, sys
    import torch
    import fastload

    cfg = json.loads(sys.argv[1])
    caught = []

    def swallow(signum, frame):  # what Lightning's SIGTERM handler does with the signal
        caught.append(signum)

    for name in cfg["handlers"]:
        signal.signal(getattr(signal, name), swallow)

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return i

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            return iter(range(info.id if info else 0, 64, info.num_workers if info else 1))

    workers = cfg.get("workers", 2)
    kw = dict(batch_size=4, num_workers=workers, persistent_workers=cfg["persistent"])
    case = cfg["case"]
    if case == "plain":
        loader = fastload.DataLoader(Plain(), **kw)
    elif case == "stream":
        loader = fastload.DataLoader(Stream(), **kw)
    else:
        if case == "remote":  # read-ahead threads fetch the next batches' blocks
            ds = fastload.Dataset(
                cfg["path"], storage_options=cfg["storage_options"], cache_dir=cfg["cache"]
            )
        else:
            ds = fastload.Dataset(cfg["path"])
        if case == "thread":
            kw["worker_type"] = "thread"
        if case == "dali":
            kw["decode"] = {"image": fastload.ImageDecode(32, backend="dali")}
        if case == "planned":
            kw["seed"] = 3
        loader = fastload.DataLoader(ds, **kw)
    for epoch in range(cfg["epochs"]):
        for _ in loader:
            pass
    it = iter(loader)
    next(it), next(it)  # mid-epoch: workers busy, batches in flight
    print(json.dumps([p.pid for p in multiprocessing.active_children()]), flush=True)
    if cfg["end"] == "del":
        del it, loader
        gc.collect()
        print(json.dumps([p.pid for p in multiprocessing.active_children()]), flush=True)
    """
)


def run_script(cfg: dict) -> tuple[list[int], list[str]]:
    """Run the script with ``cfg``; the pids of its worker processes and its output lines,
    once it ended by itself within the deadline (a hang fails the test, its processes
    killed)."""
    code, out, err = run_python(_SCRIPT, json.dumps(cfg), DEADLINE, f"the script {cfg}")
    lines = out.splitlines()
    assert code == 0, err[-3000:]
    pids = json.loads(lines[0])
    assert wait_gone(pids, 5) == [], f"workers left behind: {cfg}"
    assert len(pids) == cfg.get("workers", 2) or cfg["case"] == "thread"
    return pids, lines


@pytest.mark.parametrize(
    "case,persistent,handlers,end",
    [
        ("fast", True, ["SIGTERM"], "exit"),
        ("fast", True, ["SIGTERM", "SIGINT"], "del"),
        ("fast", False, ["SIGTERM"], "exit"),
        ("planned", True, ["SIGTERM", "SIGINT"], "exit"),
        ("thread", True, ["SIGTERM"], "exit"),
        ("plain", True, ["SIGTERM"], "exit"),
        ("plain", True, ["SIGTERM"], "del"),
        ("stream", False, ["SIGTERM", "SIGINT"], "exit"),
    ],
)
def test_the_process_ends_whatever_handlers_it_installed(ds_paths, case, persistent, handlers, end):
    cfg = {
        "case": case,
        "persistent": persistent,
        "handlers": handlers,
        "end": end,
        "epochs": 1,
        "path": str(ds_paths["none"]),
    }
    pids, lines = run_script(cfg)
    assert len(pids) == (0 if case == "thread" else 2)
    if end == "del":
        assert json.loads(lines[1]) == []  # gone before the script went on


@pytest.mark.dali
def test_the_process_ends_with_dali_decoding(tmp_path):
    pytest.importorskip("nvidia.dali")
    from tests.loader.test_loader_dali import write

    path = write(tmp_path / "ds")
    cfg = {
        "case": "dali",
        "persistent": True,
        "handlers": ["SIGTERM"],
        "end": "exit",
        "epochs": 1,
        "path": str(path),
    }
    pids, _ = run_script(cfg)
    assert len(pids) == 2


# ------------------------------------------------------------ workers run no inherited handler


def _mark(path: str):
    def handler(signum, frame):
        Path(path, f"{os.getpid()}").touch()

    return handler


class Plain(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 400

    def __getitem__(self, i: int) -> int:
        time.sleep(0.01)
        return i


@pytest.mark.parametrize("path_kind", ["fast", "general"])
def test_workers_do_not_run_the_handlers_they_inherit(ds_paths, tmp_path, path_kind):
    """SIGTERM sent to a worker ends it (the handler the main process installed does not
    run there: it would have swallowed the signal), and the loader reports the death."""
    previous = signal.signal(signal.SIGTERM, _mark(str(tmp_path)))
    try:
        if path_kind == "fast":
            from .loadertools import SlowDataset

            loader = fastload.DataLoader(
                SlowDataset(ds_paths["none"], delay=0.05), batch_size=2, num_workers=2
            )
        else:
            loader = fastload.DataLoader(Plain(), batch_size=2, num_workers=2)
        it = iter(loader)
        first = next(it)
        if path_kind == "fast":
            check_batch(first)
            victim = loader._pool.workers[0].pid
        else:
            import multiprocessing

            victim = multiprocessing.active_children()[0].pid
        os.kill(victim, signal.SIGTERM)
        # (torch's iterators learn of it by SIGCHLD, raising wherever the main thread is: a
        # loop that does nothing else is inside next(), which names the death as fastload's)
        with pytest.raises(WorkerDiedError, match="SIGTERM|exited unexpectedly|killed by signal"):
            for _ in it:
                pass
        assert wait_gone([victim], 10) == []
        assert not any(tmp_path.iterdir())  # no process ran the handler
        assert not alive(victim)
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    "said",
    [
        # torch's iterator, finding a worker gone; its SIGCHLD handler, raising wherever the
        # main thread is (both message forms as torch writes them)
        "DataLoader worker (pid(s) 30004) exited unexpectedly",
        "DataLoader worker (pid 30004) is killed by signal: Terminated. ",
    ],
)
def test_each_way_torch_says_a_worker_died_is_a_worker_death(said):
    from fastload.loader.general import fatal

    died = fatal(RuntimeError(said), 3, None)
    assert isinstance(died, WorkerDiedError) and str(died).startswith(said)
    assert fatal(RuntimeError("a batch failed"), 3, None) is None  # one batch's error
