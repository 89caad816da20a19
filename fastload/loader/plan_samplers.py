"""A planned loader's order in torch's shapes: its share of the epoch's plan as a
DistributedSampler (what frameworks look for before they put in their own) and as a batch
sampler for torch's iterators (the general path), and the plan recovered from them when a
framework rebuilds the loader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DistributedSampler

from .planned_order import Planner

__all__ = ["PlanBatchSampler", "PlanSampler", "given_plan"]


class PlanBatchSampler:
    """The batches of the planner's current iteration, as torch's DataLoader (general path)
    or the fast path consume a ``batch_sampler``."""

    def __init__(self, planner: Planner, *, as_lists: bool) -> None:
        self.planner = planner
        self.batch_size = planner.batch_size
        self.as_lists = as_lists

    def __iter__(self) -> Iterator[Any]:
        cursor = self.planner.current or self.planner.begin()
        mix = self.planner.mix
        batches = (
            cursor.plan.batches()
            if mix is None
            else (cursor.indices(j, mix) for j in range(cursor.plan.num_batches))
        )
        skip = set(cursor.skip)  # handed out before a resume (in_order=False)
        for j, idx in enumerate(batches):
            if j not in skip:
                yield idx.tolist() if self.as_lists else idx

    def __len__(self) -> int:
        return self.planner.num_batches()


class PlanSampler(DistributedSampler):
    """The planned order as a torch sampler: this rank's share of the epoch's order, in
    order (``loader.sampler`` of a planned loader; ``loader.batch_sampler`` cuts it into
    the loader's batches). A DistributedSampler because it is one: every rank reads its own
    share, so a framework that gives a loader a DistributedSampler (Lightning) sees that it
    has one, and ``set_epoch`` reaches the plan. Iterating it changes nothing: it lists the
    running iteration's share, else the next one's."""

    def __init__(self, planner: Planner) -> None:  # (DistributedSampler's asks torch.distributed)
        self.planner = planner
        self.dataset = planner.dataset

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return self.planner.topology()[1]

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self.planner.topology()[0]

    @property
    def epoch(self) -> int:  # type: ignore[override]
        return self.planner.info()["epoch"]

    @property
    def shuffle(self) -> bool:  # type: ignore[override]
        return self.planner.shuffle

    @property
    def seed(self) -> int:  # type: ignore[override]
        return int(self.planner.seed)

    @property
    def drop_last(self) -> bool:  # type: ignore[override]
        return self.planner.drop_last

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        return self.planner.epoch_samples()

    @property
    def total_size(self) -> int:  # type: ignore[override]
        return self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.planner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        planner = self.planner
        cursor = planner.peek()
        for j in range(cursor.plan.num_batches):
            if j not in cursor.skip:
                yield from cursor.indices(j, planner.mix).tolist()

    def __len__(self) -> int:
        return self.num_samples


def given_plan(sampler: Any, batch_sampler: Any) -> Planner | None:
    """The plan of a planned loader handed back to a new one: its PlanSampler as the
    sampler, or inside the batch sampler (a framework rebuilding the loader, as Lightning
    does to record the indices of predictions)."""
    for candidate in (
        sampler,
        getattr(batch_sampler, "sampler", None),
        getattr(getattr(batch_sampler, "_batch_sampler", None), "sampler", None),
    ):
        if isinstance(candidate, PlanSampler):
            return candidate.planner
    return None
