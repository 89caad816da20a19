"""The environment for a fresh interpreter that a test starts (``python -c``) and that imports
the test helpers as the tests do (``from tests.format.formattools import ...``): the checkout's
root first on ``PYTHONPATH``, where pytest puts it for the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """``os.environ`` with the checkout's root first on ``PYTHONPATH``."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *rest])}
