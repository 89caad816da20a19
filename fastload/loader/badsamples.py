"""What the loader does with a bad sample (a record that fails its checksum, an image that
does not decode): raise (the default), or skip it within a budget (``DataLoader(...,
bad_samples="skip")`` or ``SkipBadSamples(...)``).

Skipping drops the sample from its batch (the batch comes one shorter; a batch whose every
sample was bad comes with 0 samples, so that step counts and resumption stay aligned), counts
it in ``loader.stats()["skipped_samples"]`` and logs a warning at most every
``LOG_SECONDS``. With a planned order the counts are part of ``state_dict`` and come back
with ``load_state_dict`` on the same rank (skipped samples of the consumed batches are not
read again). The budget turns a broken dataset back into an error: more than
``max_consecutive`` bad samples in a row, or more than ``max_fraction`` of the samples once
``probation`` samples have been seen, raise :class:`fastload.errors.TooManyBadSamplesError`
naming the counts and the last bad record. Only those two faults are skipped: a missing or
unreadable shard, an I/O error, MemoryError or KeyboardInterrupt always raise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import PlanStateError, TooManyBadSamplesError

__all__ = ["SkipBadSamples", "BadSampleBudget", "policy_of", "check_counts"]

LOG_SECONDS = 10.0
log = logging.getLogger("fastload")


@dataclass(frozen=True)
class SkipBadSamples:
    """Skip bad samples within a budget (see the module docstring)."""

    max_fraction: float = 0.01
    max_consecutive: int = 100
    probation: int = 100  # samples seen before max_fraction applies

    def __post_init__(self) -> None:
        if not 0 <= self.max_fraction <= 1:
            raise ValueError(f"max_fraction must be in [0, 1], got {self.max_fraction!r}")
        if self.max_consecutive < 0 or self.probation < 0:
            raise ValueError("max_consecutive and probation must be >= 0")


def policy_of(bad_samples: object) -> SkipBadSamples | None:
    """``bad_samples`` as a policy: None to raise, else the budget to skip within."""
    if bad_samples == "raise":
        return None
    if bad_samples == "skip":
        return SkipBadSamples()
    if isinstance(bad_samples, SkipBadSamples):
        return bad_samples
    raise ValueError(
        f"bad_samples must be 'raise', 'skip' or a SkipBadSamples, got {bad_samples!r}"
    )


class BadSampleBudget:
    """The consumer's count of samples delivered and skipped, in delivery order."""

    def __init__(self, policy: SkipBadSamples) -> None:
        self.policy = policy
        self.seen = self.skipped = self.in_a_row = 0
        self.last = ""
        self._logged_at = float("-inf")

    def add(self, n: int, bad: Sequence[tuple[int, str]] = ()) -> None:
        """A batch of ``n`` samples whose rows ``bad`` (row, why) were skipped; raises
        TooManyBadSamplesError once the budget is spent."""
        self.seen += n
        if not bad:
            self.in_a_row = 0
            return
        rows = {row for row, _ in bad}
        self.skipped += len(rows)
        self.last = bad[-1][1]
        for row in range(n):
            self.in_a_row = self.in_a_row + 1 if row in rows else 0
            if self.in_a_row > self.policy.max_consecutive:
                raise TooManyBadSamplesError(
                    f"{self.in_a_row} bad samples in a row (max_consecutive="
                    f"{self.policy.max_consecutive}); {self._so_far()}"
                )
        fraction = self.skipped / self.seen
        if self.seen >= self.policy.probation and fraction > self.policy.max_fraction:
            raise TooManyBadSamplesError(
                f"{fraction:.1%} of the samples were bad (max_fraction="
                f"{self.policy.max_fraction:g} after {self.policy.probation} samples); "
                f"{self._so_far()}"
            )
        now = time.monotonic()
        if now - self._logged_at >= LOG_SECONDS:
            log.warning(
                "fastload: skipped %d bad sample(s) so far; last: %s", self.skipped, self.last
            )
            self._logged_at = now

    def counts(self) -> dict[str, int]:
        """Samples seen and skipped so far (for state_dict)."""
        return {"seen": self.seen, "skipped": self.skipped}

    def restore(self, counts: Mapping | None) -> None:
        """Continue from ``counts`` (from :meth:`counts`), or from zero when None."""
        self.seen = int(counts["seen"]) if counts else 0
        self.skipped = int(counts["skipped"]) if counts else 0
        self.in_a_row = 0

    def state(self, rank: int) -> dict:
        """This rank's counts for ``state_dict`` (they differ between ranks)."""
        return {"rank": rank, **self.counts()}

    def restore_state(self, state: Mapping, rank: int, world: int) -> None:
        """Continue from the counts a loader state holds if it was saved by this rank of a
        world of this size (another rank's are not ours), else from zero."""
        saved = state.get("bad_samples")
        check_counts(saved)
        mine = (
            isinstance(saved, Mapping)
            and saved.get("rank") == rank
            and state.get("world_size") == world
        )
        self.restore(saved if mine else None)

    def _so_far(self) -> str:
        return f"{self.skipped} of {self.seen} samples skipped so far; last: {self.last}"


def check_counts(saved: object) -> None:
    """A state's ``bad_samples`` part (None, or what :meth:`BadSampleBudget.state` made);
    PlanStateError naming the field otherwise."""
    if saved is None:
        return
    if not isinstance(saved, Mapping):
        raise PlanStateError(
            f"loader state is corrupted: field 'bad_samples' should be a mapping, got "
            f"{type(saved).__name__}"
        )
    for key in ("rank", "seen", "skipped"):
        value = saved.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise PlanStateError(
                f"loader state is corrupted: field 'bad_samples.{key}' should be an int >= 0, "
                f"got {value!r}"
            )
    if saved["skipped"] > saved["seen"]:
        raise PlanStateError(
            f"loader state is corrupted: field 'bad_samples.skipped' = {saved['skipped']} is "
            f"more than the {saved['seen']} samples seen"
        )
