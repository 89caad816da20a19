"""Where bytes come from and go to: fsspec URLs, local maps, atomic writes."""

from .fs import atomic_write, join, open_fs, remove_quietly
from .source import FileSource, MappedSource, open_source

__all__ = ["atomic_write", "join", "open_fs", "remove_quietly", "FileSource", "MappedSource",
           "open_source"]  # fmt: skip
