"""``fastload verify``: check every checksum of a dataset and report what is wrong; with
``deep``, also decode every record's structure and report what can never be read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .dataset import Dataset
from .errors import FastloadError
from .format.record import RecordLayout

__all__ = ["VerifyReport", "verify_dataset"]


@dataclass
class VerifyReport:
    shards: int = 0
    records: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    deep: bool = False  # whether every record's structure was decoded too

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(
    path: str,
    *,
    storage_options: dict[str, Any] | None = None,
    on_shard: Callable[[int], object] | None = None,
    max_problems: int = 100,
    deep: bool = False,
    follow_symlinks: bool = False,
) -> VerifyReport:
    """Read every block of every shard and check its checksum, and every record's.

    ``deep``: also decode every record that passes its checksum as the schema says (var ends
    inside the record, variable shapes that fit their bytes, UTF-8, JSON, image sizes) and
    parse each image's header, which must match the format and size stored with it; each
    record that could never be read is reported. It costs a decode per record.

    Does not stop at the first problem: the report names every bad shard, block and record
    (up to ``max_problems``). Raises only if the manifest itself cannot be read.
    """
    # Remote: check the server's bytes themselves, not cached copies (and cache nothing).
    ds = Dataset(
        path, storage_options=storage_options, cache_dir=False, follow_symlinks=follow_symlinks
    )
    check = RecordLayout(ds.schema).problem if deep else None
    report = VerifyReport(deep=deep)
    try:
        for s, info in enumerate(ds.shards):
            report.shards += 1
            try:
                reader = ds.shard_reader(s)
                for problem in reader.problems(check):
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
