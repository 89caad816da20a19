"""The examples run as their docstrings say: the README's quickstart, packed token rows from
JSON Lines, and DDP training that is interrupted and resumed from its checkpoint under
torchrun (2 ranks, gloo, loopback)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ddp.ddptools import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(args: list[str], timeout: float = 240) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_quickstart(tmp_path):
    out = run([str(EXAMPLES / "quickstart.py"), "--images", "800", "--workdir", str(tmp_path)])
    assert re.search(r"epoch 1: 768 samples in [\d.]+ s, [\d,]+ samples/s", out), out
    # 3 batches of 256 an epoch: 2 before the saved state, 1 after it
    assert "resumed epoch 2 after 2 batches: 256 more samples (768 of 768)" in out, out


def test_pack_tokens(tmp_path):
    out = run(
        [
            str(EXAMPLES / "pack_tokens.py"),
            "--docs",
            "1500",
            "--seq-len",
            "128",
            "--workdir",
            str(tmp_path),
        ]
    )
    assert "'input_ids': 'int64[?]'" in out, out
    assert re.search(r"packed rows of 128: 1,500 documents, [\d,]+ tokens in [\d.]+ s", out), out
    kept = int(re.search(r"padded to 128: ([\d,]+) tokens kept", out)[1].replace(",", ""))
    assert 0.9 * 1500 * 128 < kept <= 1500 * 128, out  # most documents are cut to 128


def torchrun(workdir: Path, *extra: str) -> str:
    return run(
        [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(EXAMPLES / "ddp_train.py"),
            "--workdir",
            str(workdir),
            "--rows",
            "1024",
            "--batch-size",
            "16",
            "--workers",
            "1",
            "--save-every",
            "10",
            *extra,
        ]
    )


@pytest.mark.slow
def test_ddp_training_stops_and_resumes_where_its_checkpoint_says(tmp_path):
    first = torchrun(tmp_path, "--stop-after", "15")
    assert first.count("stopping after step 15") == 2, first
    second = torchrun(tmp_path)
    # 1024 rows / (2 ranks x 16) = 32 steps an epoch; saved at step 10, so 22 are left
    assert "resumed at step 10: epoch 0, sample 320 of 1024" in second, second
    for rank in (0, 1):
        assert re.search(rf"rank {rank}/2 epoch 0: 352 samples", second), second
        assert re.search(rf"rank {rank}/2 epoch 1: 512 samples", second), second
    losses = [float(x) for x in re.findall(r"last loss ([\d.]+)", second)]
    assert len(losses) == 4 and max(losses) < 5.5  # it learned: ln(512) = 6.2 at the start
