"""How remote shards are read: :class:`RemoteOptions` (``Dataset(remote_options=)``), and the
fsspec options fastload's own reads use."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from ..cache import DEFAULT_CACHE_LIMIT
from ..retry import RetryPolicy

__all__ = ["RemoteOptions", "read_fs_options"]


@dataclass
class RemoteOptions:
    """How remote shards are read (``Dataset(..., cache_dir=, cache_limit=, ...)``)."""

    cache_dir: str | Literal[False] | None = None  # None: the default directory; False: none
    cache_limit: int | str = DEFAULT_CACHE_LIMIT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 8  # ranged GETs in flight per process
    max_request: int = 8 << 20  # neighbouring blocks are coalesced up to this many bytes
    memory_limit: int = 128 << 20  # bytes of read-ahead held in memory per process
    readahead_blocks: int = 4  # when a shard is read in order, blocks fetched ahead
    mapped_blocks: int = 1024  # cached blocks kept mapped per process (verified once)
    tail_bytes: int = 256 << 10  # the end of a shard fetched at open: trailer, index (and
    # the last blocks; all of a small shard)
    share_manifest: bool = False  # the local ranks of a launch read the manifest once: local
    # rank 0 fetches it, the others take its copy in the cache directory (manifest_share.py)
    manifest_wait_s: float = 300.0  # how long they wait for that copy


def read_fs_options(protocol: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options for fastload's reads: retries are fastload's (counted, resumable,
    bounded), so s3fs/botocore make one attempt each unless the user configured theirs."""
    opts = copy.deepcopy(dict(storage_options or {}))
    if protocol in ("s3", "s3a"):
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("retries", {"total_max_attempts": 1})
        config.setdefault("connect_timeout", 10)
        config.setdefault("read_timeout", 30)
        opts["config_kwargs"] = config
    return opts
