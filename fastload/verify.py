"""``fastload verify``: check every checksum of a dataset and report what is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .dataset import Dataset
from .errors import FastloadError

__all__ = ["VerifyReport", "verify_dataset"]


@dataclass
class VerifyReport:
    shards: int = 0
    records: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(
    path: str,
    *,
    storage_options: dict[str, Any] | None = None,
    on_shard: Callable[[int], None] | None = None,
    max_problems: int = 100,
) -> VerifyReport:
    """Read every block of every shard and check its checksum, and every record's.

    Does not stop at the first problem: the report names every bad shard, block and record
    (up to ``max_problems``). Raises only if the manifest itself cannot be read.
    """
    # Remote: check the server's bytes themselves, not cached copies (and cache nothing).
    ds = Dataset(path, storage_options=storage_options, cache_dir=False)
    report = VerifyReport()
    try:
        for s, info in enumerate(ds.shards):
            report.shards += 1
            try:
                reader = ds.shard_reader(s)
                for problem in reader.problems():
                    report.problems.append(str(problem))
                    if len(report.problems) >= max_problems:
                        return report
            except FastloadError as e:
                report.problems.append(str(e))
            else:
                report.records += info.records
                report.bytes += info.bytes
            finally:
                if on_shard is not None:
                    on_shard(info.bytes)
    finally:
        ds.close()
    return report
