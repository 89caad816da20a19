"""Where bytes come from and go to: fsspec URLs, local maps, atomic writes; remote reads with
retries, read-ahead and a local block cache."""

from .cache import BlockCache
from .fs import atomic_write, join, open_fs, remove_quietly
from .iostats import io_stats
from .remote import RemoteOptions
from .retry import RetryPolicy
from .source import FileSource, MappedSource, open_byte_source

__all__ = [
    "atomic_write",
    "join",
    "open_fs",
    "remove_quietly",
    "FileSource",
    "MappedSource",
    "open_byte_source",
    "BlockCache",
    "RemoteOptions",
    "RetryPolicy",
    "io_stats",
]
