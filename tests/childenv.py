"""The environment for a fresh interpreter that a test starts (``python -c``) and that imports
the test helpers as the tests do (``from tests.format.formattools import ...``): the checkout's
root first on ``PYTHONPATH``, where pytest puts it for the tests themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """``os.environ`` with the checkout's root first on ``PYTHONPATH``."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *rest])}


def run_python(code: str, arg: str, deadline: float, what: str) -> tuple[int, str, str]:
    """Run ``python -c code arg`` in a session of its own; ``(returncode, stdout, stderr)``
    once it ended by itself within ``deadline`` seconds. A hang fails the test (``what``
    names the run), its whole process group killed first."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, arg],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        pytest.fail(f"{what} did not end within {deadline} s\n{err[-4000:]}")
    return child.returncode, out, err
