"""Builders of tiny convert inputs whose records encode their index, and output helpers."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image

import fastload


def jpeg_bytes(i: int) -> bytes:
    """A small JPEG whose size and colour encode ``i``."""
    buf = io.BytesIO()
    Image.new("RGB", (8 + i % 7, 8 + i % 5), (i * 37 % 256, i * 11 % 256, 90)).save(buf, "JPEG")
    return buf.getvalue()


def png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5 + i % 3, 6), (i % 256, 3, 200)).save(buf, "PNG")
    return buf.getvalue()


def make_imagefolder(
    root: Path,
    n: int = 24,
    classes: tuple[str, ...] = ("cat", "dog", "eel"),
) -> list[tuple[str, int, bytes]]:
    """``root/<class>/<i>.jpg|png``; returns (relative path, label, bytes) in convert order."""
    expected = []
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = i % len(classes)
        ext = "png" if i % 4 == 3 else "jpg"
        data = png_bytes(i) if ext == "png" else jpeg_bytes(i)
        rel = f"{classes[label]}/{i:04d}.{ext}"
        (root / rel).write_bytes(data)
        expected.append((rel, label, data))
    return sorted(expected, key=lambda e: (e[1], e[0]))


def dir_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` by relative path: for byte-identical comparisons."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def read_all(path: Path) -> list[dict]:
    with fastload.Dataset(path) as ds:
        return list(ds)


def cli_command() -> list[str]:
    """How to run the ``fastload`` command in a subprocess."""
    return [sys.executable, "-m", "fastload"]


def files_outside(base: Path, allowed: Path) -> set[str]:
    """Files under ``base`` that are not under ``allowed``."""
    return {str(p) for p in base.rglob("*") if p.is_file() and allowed not in p.parents}
