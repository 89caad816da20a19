"""What every convert source provides, and helpers the sources share.

A source turns one kind of input into records of one :class:`~fastload.format.schema.Schema`:

- :meth:`Source.schema` is decided once, in the main process;
- :meth:`Source.tasks` splits the input into :class:`Task` s of roughly ``shard_size`` input
  bytes, from the input alone (never from the worker count), so the output is byte-identical
  however many workers run;
- :meth:`Source.read` yields the records of one task, in order. A bad input record is *yielded*
  as a :class:`~fastload.errors.SourceRecordError` (not raised), so the runner can either fail
  or skip it and carry on with the next record.

Sources and tasks are plain picklable objects: they are sent to worker processes.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, TypeVar, Union

from ..errors import ConvertError, SchemaError, SourceRecordError
from ..format.record import RecordLayout
from ..format.schema import Field, Schema

__all__ = [
    "Record",
    "ReadItem",
    "Task",
    "Source",
    "pack",
    "list_files",
    "check_field_name",
]

Record = dict[str, Any]
#: What :meth:`Source.read` yields: a record, or the error of one bad input record.
ReadItem = Union[Record, SourceRecordError]
T = TypeVar("T")


@dataclass(frozen=True)
class Task:
    """One unit of work: its records go to one part of the output, written by one worker.

    Sources subclass this with what they need to find the records (files, row groups, byte
    ranges, sample ranges). ``input_bytes`` drives the progress bar and the scheduling.
    """

    input_bytes: int

    def describe(self) -> str:
        """Where the task's records come from, for messages."""
        return repr(self)


class Source(ABC):
    """One kind of convert input (see the module docstring for the contract)."""

    #: The name ``--from`` selects this source by.
    name: str = ""

    @abstractmethod
    def schema(self) -> Schema:
        """The schema of every record; fixed before any task runs."""

    @abstractmethod
    def tasks(self) -> list[Task]:
        """The input split deterministically into tasks, in output order."""

    @abstractmethod
    def read(self, task: Task) -> Iterator[ReadItem]:
        """The records of ``task`` in order; a bad input record is yielded as an error."""

    def read_encoded(self, task: Task, layout: RecordLayout) -> Iterator[bytes] | None:
        """Optionally, ``task``'s records already encoded in ``layout``, for sources whose
        records are plain slices of input bytes (tokens); they skip the per-record encoder.
        None (the default) means: use :meth:`read`. Only records, never errors, come out."""
        return None

    def notes(self) -> list[str]:
        """Facts worth printing before and after the convert (class names, dropped tokens)."""
        return []


def pack(items: Sequence[T], sizes: Sequence[int], target: int) -> list[list[T]]:
    """Split ``items`` into consecutive groups of about ``target`` total size each.

    A group is closed once it reaches ``target``; an item bigger than ``target`` gets a group
    of its own. The grouping depends only on the sizes, so it is deterministic.
    """
    groups: list[list[T]] = []
    current: list[T] = []
    total = 0
    for item, size in zip(items, sizes):
        if current and total + size > target:
            groups.append(current)
            current, total = [], 0
        current.append(item)
        total += size
    if current:
        groups.append(current)
    return groups


def list_files(src: str, suffixes: Iterable[str], *, what: str) -> list[str]:
    """``src`` itself if it is a file, else every file under the directory ``src`` whose name
    ends with one of ``suffixes`` (case-insensitive), sorted by relative path.

    Hidden files and folders (names starting with '.') are ignored. Raises ConvertError if
    nothing matches.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    if os.path.isfile(src):
        return [src]
    if not os.path.isdir(src):
        raise ConvertError(f"{src}: no such file or directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(suffixes)
        ]
    if not found:
        raise ConvertError(f"{src}: no {what} files ({', '.join(suffixes)}) found")
    return sorted(found, key=lambda p: os.path.relpath(p, src).split(os.sep))


def check_field_name(name: str, where: str) -> str:
    """``name`` if it can be a field name, else a ConvertError saying which input it came from."""
    try:
        Field(name, "bytes")
    except SchemaError:
        raise ConvertError(
            f"{where}: {name!r} cannot be a field name (use letters, digits, '_', '.', '-', "
            "starting with a letter or '_'); rename it in the input"
        ) from None
    return name
