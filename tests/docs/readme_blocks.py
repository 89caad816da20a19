"""The README's examples, found and run as written (tests/docs/test_readme.py).

To make an example run in the test, put the marker comment on the line right above its
opening fence (GitHub does not show it)::

    <!-- readme-test -->
    ```python
    import fastload
    ...
    ```

``<!-- readme-test timeout=300 -->`` gives it more than the default 180 s. Only ``python``
and ``bash`` blocks can be marked.

How marked blocks run: all of them, in the order they appear, in one temporary workspace
directory, each in a process of its own (so each must stand alone; they share only files:
a convert's output is there for the blocks after it). A python block is a script
(``python block.py``, ``__name__ == "__main__"``); a bash block runs under
``bash -euo pipefail`` with ``fastload`` on PATH (``python -m fastload``). The workspace holds
the small inputs the README's paths name (:func:`make_workspace`): when a new example needs
an input that is not there, add it there. A block passes when it exits with status 0: output
shown in comments is not compared, so a block that wants a value checked asserts it.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "extract", "make_workspace", "CLASSES"]

_MARKER = re.compile(r"^<!--\s*readme-test((?:\s+\w+=\S+)*)\s*-->\s*$")
_FENCE = re.compile(r"^```(\w*)")
DEFAULT_TIMEOUT = 180.0
CLASSES = ("cat", "dog", "eel")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    timeout: float


def extract(text: str) -> list[Block]:
    """Every marked block of a Markdown text, in order. A marker not followed by a fence, an
    unknown attribute or a language other than python/bash is a ValueError (a typo must not
    quietly take an example out of the test)."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = _MARKER.match(line.strip())
        if m is None:
            continue
        attrs = dict(a.split("=", 1) for a in m.group(1).split())
        unknown = set(attrs) - {"timeout"}
        fence = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if unknown or fence is None or fence.group(1) not in ("python", "bash"):
            raise ValueError(
                f"README line {i + 1}: a readme-test marker must be followed by a ```python "
                f"or ```bash fence and take only timeout= (got {line.strip()!r})"
            )
        end = next((k for k in range(i + 2, len(lines)) if lines[k].startswith("```")), None)
        if end is None:
            raise ValueError(f"README line {i + 2}: the fence is never closed")
        code = "\n".join(lines[i + 2 : end]) + "\n"
        timeout = float(attrs.get("timeout", DEFAULT_TIMEOUT))
        blocks.append(Block(i + 2, fence.group(1), code, timeout))
    return blocks


def make_workspace(root: Path) -> None:
    """The inputs the README's examples name, small: ``imagenet-like/`` (class folders of
    JPEGs), ``hf-dataset/`` (Parquet as the Hub has it: ``data/train-*``, ``data/test-*``,
    with Image and ClassLabel features) and ``shards/shard-000..003.tar`` (WebDataset)."""
    from PIL import Image

    def jpeg(i: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (40 + i % 9, 36 + i % 5), (i * 37 % 256, i * 11 % 256, 90)).save(
            buf, "JPEG"
        )
        return buf.getvalue()

    for i in range(300):
        folder = root / "imagenet-like" / CLASSES[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:04d}.jpg").write_bytes(jpeg(i))
    _hf_parquet(root / "hf-dataset" / "data", jpeg)
    (root / "shards").mkdir()
    for k in range(4):
        with tarfile.open(root / "shards" / f"shard-{k:03d}.tar", "w") as tf:
            for i in range(k * 25, k * 25 + 25):
                for ext, data in (("jpg", jpeg(i)), ("cls", str(i % 3).encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))


def _hf_parquet(data: Path, jpeg) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data.mkdir(parents=True)
    features = {
        "image": {"_type": "Image"},
        "label": {"names": list(CLASSES), "_type": "ClassLabel"},
    }
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split, n in (("train", 120), ("test", 30)):
        rows = range(n)
        table = pa.table(
            {
                "image": pa.array([{"bytes": jpeg(i), "path": f"{i}.jpg"} for i in rows], image),
                "label": pa.array([i % 3 for i in rows], pa.int64()),
            }
        ).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, data / f"{split}-00000-of-00001.parquet")
