"""The README's examples run as written: every block marked ``<!-- readme-test -->`` runs, in
order, in a workspace of small generated inputs (see readme_blocks.py for how to mark one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.childenv import ROOT, child_env

from .readme_blocks import Block, extract, make_workspace

BLOCKS = extract((ROOT / "README.md").read_text())

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    make_workspace(root)
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "fastload"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fastload "$@"\n')
    shim.chmod(0o755)
    return root


def run_block(block: Block, root: Path) -> subprocess.CompletedProcess:
    env = {
        **child_env(),  # the checkout first on PYTHONPATH
        "PATH": f"{root / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "FASTLOAD_CACHE_DIR": str(root / ".cache"),
        "OMP_NUM_THREADS": "1",
    }
    if block.lang == "python":
        script = root / f".readme-block-{block.line}.py"
        script.write_text(block.code)
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    return subprocess.run(
        command, cwd=root, env=env, capture_output=True, text=True, timeout=block.timeout
    )


@pytest.mark.slow  # the examples together take ~40 s on 2 cores
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"README.md:{b.line}")
def test_readme_example_runs(block, workspace):
    done = run_block(block, workspace)
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.lang}) exited {done.returncode}:\n{block.code}\n"
        f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
    )


def test_the_readme_marks_its_examples():
    langs = {b.lang for b in BLOCKS}
    assert langs == {"python", "bash"} and len(BLOCKS) >= 10


def test_markers_are_parsed_strictly():
    text = (
        "intro\n<!-- readme-test -->\n```python\nprint(1)\n```\n"
        "```python\nnot marked\n```\n"
        "<!-- readme-test timeout=5 -->\n```bash\necho hi\n```\n"
    )
    blocks = extract(text)
    assert [(b.line, b.lang, b.code, b.timeout) for b in blocks] == [
        (3, "python", "print(1)\n", 180.0),
        (10, "bash", "echo hi\n", 5.0),
    ]
    for bad in (
        "<!-- readme-test -->\ntext\n",
        "<!-- readme-test tiemout=5 -->\n```python\nx\n```\n",
        "<!-- readme-test -->\n```json\n{}\n```\n",
        "<!-- readme-test -->\n```python\nx\n",
    ):
        with pytest.raises(ValueError, match="README line"):
            extract(bad)
