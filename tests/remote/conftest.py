"""Object-store servers on loopback for the remote tests, started and stopped by the suite.

Fixtures (reuse them; every one keeps all traffic on 127.0.0.1):

- ``s3_server`` (session): moto's S3 server. Yields a :class:`Server` with ``endpoint_url``,
  ``storage_options`` (for ``fastload.Dataset(..., storage_options=...)`` / s3fs) and ``fs()``.
- ``gcs_server`` (session): the GCS emulator (gcp-storage-emulator, in memory, in its own
  process). Same shape: ``endpoint_url``, ``storage_options`` (for gcsfs), ``fs()``.
- ``s3_bucket`` / ``gcs_bucket`` (function): a fresh, empty bucket; yields its URL
  (``s3://name`` / ``gs://name``).
- ``fault_proxy`` (function): a fault-injecting HTTP proxy in front of ``s3_server``
  (see faultproxy.py); yields the :class:`faultproxy.FaultProxy`, whose ``storage_options`` point
  s3fs at the proxy. ``gcs_fault_proxy``: the same in front of ``gcs_server`` (for gcsfs).
"""

from __future__ import annotations

import os

# gcsfs otherwise asks the emulator a gRPC question it cannot answer and stalls 60 s per bucket
# operation; must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from .faultproxy import FaultProxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Server:
    """An object-store server on loopback."""

    kind: str  # "s3" or "gcs"
    endpoint_url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return "s3" if self.kind == "s3" else "gs"

    def fs(self, **extra):
        """A fresh (uncached) fsspec filesystem for this server."""
        import fsspec

        return fsspec.filesystem(
            self.protocol, skip_instance_cache=True, **{**self.storage_options, **extra}
        )

    def new_bucket(self, prefix: str = "fl") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.fs().mkdir(name)
        return f"{self.protocol}://{name}"


def s3_options(endpoint_url: str) -> dict[str, Any]:
    # No region_name: with one, moto's server fails to create buckets.
    return {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint_url}}


@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        yield Server("s3", url, s3_options(url))
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server():
    pytest.importorskip("gcsfs")
    pytest.importorskip("gcp_storage_emulator")
    port = free_port()
    code = (
        "import sys; from gcp_storage_emulator.server import create_server; "
        "s = create_server('127.0.0.1', int(sys.argv[1]), in_memory=True); s.start(); "
        "sys.stdin.read(); s.stop()"
    )  # stops when the suite closes its stdin (or dies)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        url = f"http://127.0.0.1:{port}"
        yield Server("gcs", url, {"endpoint_url": url, "token": "anon"})
    finally:
        try:
            proc.stdin.close()
            proc.wait(timeout=5)
        except Exception:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_server):
    return s3_server.new_bucket()


@pytest.fixture
def gcs_bucket(gcs_server):
    return gcs_server.new_bucket()


@pytest.fixture
def fault_proxy(s3_server):
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def gcs_fault_proxy(gcs_server):
    with FaultProxy(gcs_server.endpoint_url, kind="gcs") as proxy:
        yield proxy
