"""One read of a remote dataset's manifest per node: local rank 0 fetches it and leaves a copy
in the cache directory; the node's other ranks wait for that copy instead of each asking the
object store (``RemoteOptions(share_manifest=True)``). A manifest of a dataset with many
shards is megabytes, and a job of a few hundred ranks otherwise asks for it a few hundred
times at the same moment.

Which processes share: those with the same ``LOCAL_RANK``-setting launcher (torchrun,
``torch.multiprocessing.spawn``, SLURM and MPI launchers set it, or the user does) on this
machine, recognised by their common parent process (its pid and start time; the launcher
starts every local rank). A copy is named after the dataset's URL and that parent, so a later
job, or another job running alongside, never takes it. Copies of launches whose parent has
exited are deleted by the next local rank 0 that shares a manifest.

Failures: if local rank 0 cannot read the manifest, it leaves its error next to where the copy
would be, and the other ranks raise at once with that error, naming local rank 0; if no copy
appears within ``wait_s`` seconds (local rank 0 never got there), they raise saying which file
they waited for. Without ``LOCAL_RANK`` (or without ``/proc``) every process reads its own.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Callable

from fsspec.implementations.local import LocalFileSystem

from .. import errors
from ..format.spec import TMP_SUFFIX
from .cache import LAYOUT
from .fs import atomic_write, remove_quietly

__all__ = ["read_shared", "launch_of_this_process"]

SHARE_DIR = "manifests"
POLL_SECONDS = 0.05
# names this module writes: copies, errors, and atomic_write's temporary files of either
_NAME = re.compile(
    r"^[0-9a-f]{24}-(\d+)-(\d+)\.(json|error)"
    rf"(\.[0-9a-f]{{8}}{re.escape(TMP_SUFFIX)})?$"
)
_LOCAL = LocalFileSystem()


def launch_of_this_process() -> tuple[int, str] | None:
    """``(local rank, token of this launch on this node)``, or None when the environment says
    nothing (no ``LOCAL_RANK``) or the parent process cannot be identified."""
    local = os.environ.get("LOCAL_RANK", "")
    if not local.isdigit():
        return None
    parent = os.getppid()
    started = _start_time(parent)
    if started is None:
        return None
    return int(local), f"{parent}-{started}"


def read_shared(read: Callable[[], bytes], url: str, cache_dir: str, *, wait_s: float) -> bytes:
    """The manifest bytes of ``url``: from ``read()`` on local rank 0 (or outside a launch),
    from local rank 0's copy under ``cache_dir`` on the other local ranks."""
    launch = launch_of_this_process()
    if launch is None:
        return read()
    rank, token = launch
    folder = os.path.join(os.path.abspath(cache_dir), LAYOUT, SHARE_DIR)
    os.makedirs(folder, exist_ok=True)
    key = hashlib.sha256(url.encode()).hexdigest()[:24]
    copy = os.path.join(folder, f"{key}-{token}.json")
    failure = os.path.join(folder, f"{key}-{token}.error")
    if rank == 0:
        return _read_for_the_node(read, folder, copy, failure)
    return _wait_for_copy(url, copy, failure, wait_s)


def _read_for_the_node(read: Callable[[], bytes], folder: str, copy: str, failure: str) -> bytes:
    _remove_stale(folder)
    remove_quietly(_LOCAL, failure)  # an earlier attempt's
    try:
        data = read()
    except Exception as e:
        _write_atomic(failure, f"{type(e).__name__}\n{e}".encode())
        raise
    _write_atomic(copy, data)
    return data


def _wait_for_copy(url: str, copy: str, failure: str, wait_s: float) -> bytes:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(copy, "rb") as f:
                return f.read()
        except FileNotFoundError:
            pass
        try:
            with open(failure, encoding="utf-8", errors="replace") as f:
                name, _, message = f.read().partition("\n")
        except FileNotFoundError:
            pass
        else:
            cls = getattr(errors, name, None)
            if not (isinstance(cls, type) and issubclass(cls, errors.ManifestError)):
                cls = errors.ManifestError
            raise cls(
                f"{url}: local rank 0 of this node could not read the manifest "
                f"(see its log): {name}: {message}"
            )
        if time.monotonic() >= deadline:
            raise errors.ManifestError(
                f"{url}: waited {wait_s:g} s for local rank 0 of this node to read the "
                f"manifest (share_manifest=True), but its copy {copy} never appeared: see "
                "local rank 0's log, or check that every local rank of this launch opens "
                "this dataset"
            )
        time.sleep(POLL_SECONDS)


def _write_atomic(path: str, data: bytes) -> None:
    with atomic_write(_LOCAL, path) as f:
        f.write(data)


def _remove_stale(folder: str) -> None:
    """Copies (and errors) of launches whose parent process is gone: only names this module
    writes are ever removed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _NAME.match(name)
        if m is not None and _start_time(int(m.group(1))) != m.group(2):
            remove_quietly(_LOCAL, os.path.join(folder, name))


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks after boot, field 22 of /proc/PID/stat): with the
    pid, it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and ')'
    return fields[19] if len(fields) > 19 else None
