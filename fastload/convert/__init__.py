"""``fastload convert``: turn existing datasets into fastload's sharded format.

Modules, one job each:

- ``runner``: :func:`convert`, the entry point, and :class:`ConvertResult`;
- ``base``: the :class:`Source` contract every input kind implements, and shared helpers;
- ``auto``: picking a source by name or from the input (:func:`open_source`);
- ``imagefolder``, ``parquet`` (with ``arrow_types``), ``jsonl``, ``webdataset``, ``tokens``:
  the sources; ``images``: image validity checks they share;
- ``worker``: converting one task; ``pool``: running tasks on worker processes;
- ``progress``: the progress bar; ``cli``: the ``fastload convert`` subcommand.
"""

from .auto import SOURCES, detect_source, open_source
from .base import Source, Task
from .runner import ConvertResult, convert

__all__ = ["convert", "ConvertResult", "Source", "Task", "SOURCES", "open_source", "detect_source"]
