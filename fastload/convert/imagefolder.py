"""``root/<class>/<file>`` image folders, as torchvision's ImageFolder reads them.

Classes are the sorted names of root's subfolders and a record's label is its class's index,
so labels match torchvision's. Each record holds the file's original bytes (never re-encoded),
its label and its path relative to root. Hidden files and folders are ignored, as are files
directly under root.

Symlinks are followed only while they stay inside root; one that leads outside is a bad record
(an error, or skipped under ``skip_bad``), never read.

root may be a URL (``s3://bucket/train``): its "subfolders" are the prefixes the object store
lists under it, and a task's images are fetched concurrently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConvertError, SourceRecordError
from ..format.schema import Schema
from ..io.inputs import Inputs
from .base import Consumed, ReadItem, Source, Task, as_inputs, pack
from .images import IMAGE_SUFFIXES, image_problem

__all__ = ["ImageFolderSource", "ImageFile", "ImageFolderTask", "find_classes"]

SCHEMA = Schema({"image": "image", "label": "int64", "filename": "str"})
_FETCH_AT_ONCE = 64  # remote images fetched concurrently


@dataclass(frozen=True)
class ImageFile:
    """One listed image. ``problem`` is set when it must not be read (e.g. a symlink out)."""

    path: str  # relative to root, '/'-separated
    label: int
    size: int
    problem: str | None = None


@dataclass(frozen=True)
class ImageFolderTask(Task):
    root: str
    files: tuple[ImageFile, ...]

    def describe(self) -> str:
        return (
            f"{self.root}: {len(self.files)} images from {self.files[0].path} to "
            f"{self.files[-1].path}"
        )


class ImageFolderSource(Source[ImageFolderTask]):
    """Images in class subfolders; see the module docstring."""

    name = "imagefolder"

    def __init__(
        self, root: str | os.PathLike | Inputs, *, shard_size: int, decode_check: bool = False
    ) -> None:
        self.inputs = as_inputs(root)
        if self.inputs.kind() != "dir":
            raise ConvertError(
                f"{self.inputs.src}: not a directory (imagefolder expects root/<class>/<file>)"
            )
        self.root = self.inputs.src
        self.shard_size = shard_size
        self.decode_check = decode_check
        self.class_names = find_classes(self.root, self.inputs)
        self._n_images: int | None = None

    def schema(self) -> Schema:
        return SCHEMA

    def tasks(self) -> list[ImageFolderTask]:
        if self.inputs.local:
            files = list_images(self.root, self.class_names)
        else:
            files = _list_remote_images(self.inputs, self.class_names)
        if not files:
            raise ConvertError(
                f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) in class subfolders "
                "(imagefolder expects root/<class>/<file>)"
            )
        self._n_images = len(files)
        groups = pack(files, [f.size for f in files], self.shard_size)
        return [ImageFolderTask(sum(f.size for f in g), self.root, tuple(g)) for g in groups]

    def read(self, task: ImageFolderTask) -> Iterator[ReadItem]:
        step = 1 if self.inputs.local else _FETCH_AT_ONCE
        for start in range(0, len(task.files), step):
            files = task.files[start : start + step]
            paths = [self._path(f) for f in files]
            readable = [p for f, p in zip(files, paths) if not f.problem]
            contents = iter(self.inputs.cat_many(readable))
            for f, where in zip(files, paths):
                yield self._record(f, where, None if f.problem else next(contents))
                yield Consumed(f.size)

    def _path(self, f: ImageFile) -> str:
        return self.inputs.join(self.root, *f.path.split("/"))

    def _record(self, f: ImageFile, where: str, data: bytes | Exception | None) -> ReadItem:
        if f.problem or data is None:
            return SourceRecordError(f"{where}: {f.problem}")
        if isinstance(data, Exception):
            why = getattr(data, "strerror", None) or data
            return SourceRecordError(f"{where}: cannot be read ({why})")
        problem = image_problem(data, decode=self.decode_check)
        if problem:
            return SourceRecordError(f"{where}: {problem}")
        return {"image": data, "label": f.label, "filename": f.path}

    def classes(self) -> dict[str, list[str]]:
        return {"label": list(self.class_names)}

    def features(self) -> dict[str, Any]:
        return {
            "image": {"_type": "Image"},
            "label": {"_type": "ClassLabel", "names": list(self.class_names)},
            "filename": {"_type": "Value", "dtype": "string"},
        }

    def notes(self) -> list[str]:
        shown = ", ".join(f"{i}={c}" for i, c in enumerate(self.class_names[:50]))
        more = f", ... ({len(self.class_names)} in all)" if len(self.class_names) > 50 else ""
        count = f"{self._n_images} images in " if self._n_images is not None else ""
        return [f"imagefolder: {count}{len(self.class_names)} classes (label=name): {shown}{more}"]


def find_classes(root: str, inputs: Inputs | None = None) -> list[str]:
    """The sorted names of root's (non-hidden) subfolders, as torchvision's ImageFolder finds."""
    classes = (inputs or Inputs(root)).subdirs(root)
    if not classes:
        raise ConvertError(f"{root}: no class subfolders (imagefolder expects root/<class>/<file>)")
    return classes


def list_images(root: str, classes: list[str]) -> list[ImageFile]:
    """Every image under root's class folders, sorted by class, then by relative path."""
    real_root = os.path.realpath(root)
    files: list[ImageFile] = []
    for label, name in enumerate(classes):
        _walk(root, real_root, name, label, files, active=set())
    return files


def _list_remote_images(inputs: Inputs, classes: list[str]) -> list[ImageFile]:
    """Every image under the class prefixes of a remote root, sorted as locally."""
    files: list[ImageFile] = []
    for label, name in enumerate(classes):
        for f in inputs.walk(inputs.join(inputs.src, name)):
            if f.path.lower().endswith(IMAGE_SUFFIXES):
                rel = "/".join([name, *inputs.relative(f.path, inputs.join(inputs.src, name))])
                files.append(ImageFile(rel, label, f.size))
    return files


def _walk(
    root: str, real_root: str, rel: str, label: int, out: list[ImageFile], active: set[str]
) -> None:
    """Append the images under ``root/rel`` in sorted order, following safe symlinks."""
    path = os.path.join(root, *rel.split("/"))
    problem = _link_problem(path, real_root)
    if problem:
        out.append(ImageFile(rel, label, 0, problem))
        return
    real = os.path.realpath(path)
    if real in active:  # a symlink loop: this folder is already being listed
        return
    active.add(real)
    with os.scandir(path) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for e in entries:
        child = f"{rel}/{e.name}"
        if e.is_dir():
            _walk(root, real_root, child, label, out, active)
        elif e.name.lower().endswith(IMAGE_SUFFIXES):
            problem = _link_problem(e.path, real_root) if e.is_symlink() else None
            if problem is None and not e.is_file():
                problem = "is not a regular file (broken symlink?)"
            out.append(ImageFile(child, label, 0 if problem else e.stat().st_size, problem))
    active.discard(real)


def _link_problem(path: str, real_root: str) -> str | None:
    """Why a (possibly symlinked) path must not be followed, or None."""
    real = os.path.realpath(path)
    # commonpath, not startswith: /data/root-evil is not inside /data/root.
    if os.path.commonpath([real, real_root]) != real_root:
        return f"is a symlink to {real}, outside {real_root}; not followed"
    return None
