"""A clean exit with a remote dataset (docs/reliability.md C10): read-ahead threads fetching
the next batches' blocks, in the main process or in persistent workers, keep no process from
ending at interpreter exit, a swallowing SIGTERM handler installed or not (see
tests/loader/test_loader_exit.py)."""

from __future__ import annotations

import pytest

from tests.loader.loadertools import write_dataset
from tests.loader.test_loader_exit import run_script

from .test_remote_read import upload

pytestmark = [pytest.mark.remote, pytest.mark.timeout(180)]


@pytest.mark.parametrize("workers,persistent", [(0, False), (2, True)])
def test_the_process_ends_while_blocks_are_fetched_ahead(s3_server, tmp_path, workers, persistent):
    url = upload(s3_server, write_dataset(tmp_path / "ds", 400, compression="zstd"))
    cfg = {
        "case": "remote",
        "path": url,
        "storage_options": s3_server.storage_options,
        "cache": str(tmp_path / "cache"),
        "workers": workers,
        "persistent": persistent,
        "handlers": ["SIGTERM", "SIGINT"],
        "end": "exit",
        "epochs": 0,
    }
    pids, _ = run_script(cfg)
    assert len(pids) == workers
