"""Shared test setup: the format helpers (index-encoded records, an independent shard
parser/forger) live in tests/format/formattools.py; make them importable from every test."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "format"))
