"""What importing fastload costs a training process: reading and loading pull in neither the
converter's pyarrow (~25 MB in every process, inherited by each loader worker) nor, until the
loader is used, torch."""

from __future__ import annotations

import json

from .childenv import run_python

PROBE = """
import json, sys
import fastload
plain = sorted(m for m in ("pyarrow", "torch", "fastload.convert") if m in sys.modules)
import fastload.loader, fastload.read
loading = sorted(m for m in ("pyarrow", "fastload.convert") if m in sys.modules)
result = fastload.ConvertResult
converting = sorted(m for m in ("pyarrow", "fastload.convert") if m in sys.modules)
print(json.dumps([plain, loading, converting, callable(fastload.convert)]))
"""


def test_reading_and_loading_import_no_converter() -> None:
    code, out, err = run_python(PROBE, "", 120, "importing fastload")
    assert code == 0, err
    plain, loading, converting, convert_callable = json.loads(out)
    assert plain == []
    assert loading == []
    # the converter is there on first use, and fastload.convert still a callable
    assert converting == ["fastload.convert", "pyarrow"]
    assert convert_callable
