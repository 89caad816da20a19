"""What every convert source provides, and helpers the sources share.

A source turns one kind of input into records of one :class:`~fastload.format.schema.Schema`:

- :meth:`Source.schema` is decided once, in the main process;
- :meth:`Source.tasks` splits the input into :class:`Task` s of roughly ``shard_size`` input
  bytes, from the input alone (never from the worker count), so the output is byte-identical
  however many workers run;
- :meth:`Source.read` yields the records of one task, in order. A bad input record is *yielded*
  as a :class:`~fastload.errors.SourceRecordError` (not raised), so the runner can either fail
  or skip it and carry on with the next record. Between records it may yield :class:`Consumed`
  markers, the task's input bytes read so far, which move the progress bar while a task runs
  (without them it moves when the task ends).

Sources and tasks are plain picklable objects: they are sent to worker processes.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

from ..errors import ConvertError, SchemaError, SourceRecordError
from ..format.schema import Field, Schema
from ..io.inputs import InputFile, Inputs

__all__ = [
    "Record",
    "ReadItem",
    "Consumed",
    "Task",
    "Source",
    "pack",
    "balanced_target",
    "list_files",
    "as_inputs",
    "check_field_name",
]

Record = dict[str, Any]


@dataclass(frozen=True)
class Consumed:
    """Yielded by :meth:`Source.read` between records: ``bytes`` more input bytes of the task
    have been read (in the units of :attr:`Task.input_bytes`)."""

    bytes: int


#: What :meth:`Source.read` yields: a record, the error of one bad input record, or progress.
ReadItem = Union[Record, SourceRecordError, Consumed]
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


#: The task type of a source: a source reads only the tasks it made.
TaskT = TypeVar("TaskT", bound=Task)


class Source(ABC, Generic[TaskT]):
    """One kind of convert input (see the module docstring for the contract), reading tasks
    of type ``TaskT``."""

    #: The name ``--from`` selects this source by.
    name: str = ""
    #: True when a task's work is almost all in code that releases the GIL (numpy copies, zstd):
    #: convert then runs tasks on threads, which start in microseconds, not on processes.
    threads_suffice: bool = False

    @abstractmethod
    def schema(self) -> Schema:
        """The schema of every record; fixed before any task runs."""

    @abstractmethod
    def tasks(self) -> list[TaskT]:
        """The input split deterministically into tasks, in output order."""

    @abstractmethod
    def read(self, task: TaskT) -> Iterator[ReadItem]:
        """The records of ``task`` in order; a bad input record is yielded as an error."""

    def read_columns(self, task: TaskT) -> Iterator[dict[str, Any]] | None:
        """Optionally, ``task``'s records as columns (``{field: array (n, ...)}``, in order),
        for sources of fixed-size fields (tokens): the Writer then encodes and checksums them
        in bulk, with no Python per record. None (the default) means: use :meth:`read`."""
        return None

    def notes(self) -> list[str]:
        """Facts worth printing before and after the convert (class names, dropped tokens)."""
        return []

    def classes(self) -> dict[str, list[str]] | None:
        """The class names of label fields (``{field: names}``, index = label), kept in the
        manifest; None when the input names none."""
        return None

    def features(self) -> dict[str, Any] | None:
        """The input's own types of its columns (JSON-able, as Hugging Face features are),
        kept in the manifest; None when the input has none to tell."""
        return None


def pack(items: Sequence[T], sizes: Sequence[int], target: int) -> list[list[T]]:
    """Split ``items`` into consecutive groups of about ``target`` total size each.

    The groups are balanced: as few as ``target`` allows, of about equal size (100 MB at a
    64 MB target gives two groups of 50 MB, which two workers finish together, not 64 + 36).
    Each item goes to the group its midpoint falls in; an item bigger than a group gets a
    group of its own. The grouping depends only on the sizes, so it is deterministic.
    """
    total = sum(sizes)
    n_groups = max(1, -(-total // max(1, target)))
    groups: list[list[T]] = []
    last, before = -1, 0
    for item, size in zip(items, sizes):
        g = min(n_groups - 1, (2 * before + size) * n_groups // max(1, 2 * total))
        if g != last or not groups:
            groups.append([])
            last = g
        groups[-1].append(item)
        before += size
    return groups


def balanced_target(total: int, target: int) -> int:
    """The group size that splits ``total`` into the fewest groups of at most ``target``,
    all of about equal size."""
    groups = max(1, -(-total // max(1, target)))
    return max(1, -(-total // groups))


def as_inputs(src: str | os.PathLike | Inputs) -> Inputs:
    """``src`` as :class:`~fastload.io.inputs.Inputs` (a path or URL: with no storage
    options)."""
    return src if isinstance(src, Inputs) else Inputs(src)


def list_files(
    src: str | os.PathLike | Inputs, suffixes: Iterable[str], *, what: str
) -> list[InputFile]:
    """``src`` itself if it is a file; every file under the directory ``src`` whose name
    ends with one of ``suffixes`` (case-insensitive), sorted by relative path; or the files a
    glob or brace pattern names. Hidden files and folders (names starting with '.') are
    ignored. Raises ConvertError if nothing matches."""
    return as_inputs(src).files(tuple(suffixes), what=what)


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
