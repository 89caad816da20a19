"""``loader.stats()``: throughput, data stall and time per stage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["LoaderStats"]


@dataclass
class LoaderStats:
    """Counters of one loader across its epochs (reset with :meth:`reset`)."""

    batches: int = 0
    samples: int = 0
    bytes: int = 0
    wait_seconds: float = 0.0  # the consumer inside next(), waiting for data
    stage_seconds: dict = field(
        default_factory=lambda: {"read": 0.0, "decode": 0.0, "collate": 0.0, "transfer": 0.0}
    )
    # Remote reads (requests, retries, bytes_fetched, cache_hits, ...), summed over workers;
    # see Dataset.io_stats().
    io: dict = field(default_factory=dict)
    skipped: int = 0  # samples dropped under bad_samples="skip"
    decompressed: int = 0  # compressed blocks decompressed, summed over workers
    _started: float | None = None

    def start(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def add_batch(self, samples: int, nbytes: int, timings: dict) -> None:
        self.batches += 1
        self.samples += samples
        self.bytes += nbytes
        for stage in ("read", "decode"):
            self.stage_seconds[stage] += timings.get(stage, 0.0)
        self.decompressed += timings.get("decompressed", 0)
        for name, value in (timings.get("io") or {}).items():
            self.io[name] = self.io.get(name, 0) + value

    def reset(self) -> None:
        self.__init__()

    def as_dict(self) -> dict:
        wall = time.perf_counter() - self._started if self._started is not None else 0.0
        return {
            "batches": self.batches,
            "samples": self.samples,
            "seconds": wall,
            "samples_per_s": self.samples / wall if wall else 0.0,
            "mb_per_s": self.bytes / 1e6 / wall if wall else 0.0,
            "data_stall": self.wait_seconds / wall if wall else 0.0,
            "wait_seconds": self.wait_seconds,
            # read/decode are summed over workers (CPU-seconds), collate/transfer are the
            # consumer's own.
            "stage_seconds": dict(self.stage_seconds),
            "io": dict(self.io),
            "skipped_samples": self.skipped,
            # a compressed dataset's blocks decompressed: about its blocks once per epoch
            # when the block caches hold what the order needs; far more, when they do not
            "decompressed_blocks": self.decompressed,
        }
