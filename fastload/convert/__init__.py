"""``fastload convert``: turn existing datasets into fastload's sharded format.

Modules, one job each:

- ``runner``: :func:`convert`, the entry point, and :class:`ConvertResult`;
- ``base``: the :class:`Source` contract every input kind implements, and shared helpers;
- ``auto``: picking a source by name or from the input (:func:`open_source`);
- ``imagefolder``, ``parquet``, ``jsonl``, ``webdataset``, ``tokens``: the sources;
  ``images``: image validity checks they share;
- for ``parquet``: ``arrow_files`` (Parquet/Arrow files, local or remote: schema, units,
  batches), ``columns`` (each column to fields, Hugging Face features included),
  ``arrow_types`` (Arrow types to field types and values), ``hf`` (features in the metadata,
  ``save_to_disk`` folders, splits);
- ``worker``: converting one task; ``pool``: running tasks on worker processes;
- ``progress``: the progress bar; ``cli``: the ``fastload convert`` subcommand.

The package itself is callable: ``fastload.convert(src, dst, ...)`` is :func:`convert`.
"""

import inspect
import sys
import types

from .auto import SOURCES, detect_source, open_source
from .base import Source, Task
from .runner import ConvertResult, convert

__all__ = ["convert", "ConvertResult", "Source", "Task", "SOURCES", "open_source", "detect_source"]


class _CallableModule(types.ModuleType):
    """This package, callable as :func:`convert`. ``fastload.convert`` stays the package
    rather than the function, so that ``import fastload.convert.parquet as m`` and
    ``fastload.convert.parquet`` keep working (a function bound to the package's name would
    hide it from both)."""

    def __call__(self, *args, **kwargs) -> ConvertResult:
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__signature__ = inspect.signature(convert)  # what inspect.signature(fastload.convert) shows
