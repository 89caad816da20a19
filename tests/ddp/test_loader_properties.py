"""Property tests: for any dataset size, world size, batch size, drop_last and seed, the ranks
of a planned DataLoader (simulated in one process with explicit rank / world_size) serve every
sample once per epoch (plus the documented padding, minus the documented drop) in equal batch
counts, and a state saved at any step resumes exactly on another world size and batch size."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastload

from .ddptools import Plain, check_exactly_once

pytestmark = pytest.mark.timeout(300)


def loaders(dataset, world: int, **kwargs) -> list:
    return [fastload.DataLoader(dataset, rank=r, world_size=world, **kwargs) for r in range(world)]


def epoch(ranks: list, limit: int | None = None) -> tuple[list[int], list[int]]:
    """(indices served in step order over all ranks, batch count per rank)."""
    per_rank = []
    for loader in ranks:
        batches: list[list[int]] = []
        if limit == 0:
            per_rank.append(batches)
            continue
        for b in loader:
            batches.append([int(i) for i in (b["i"] if isinstance(b, dict) else b)])
            if limit is not None and len(batches) == limit:
                break
        per_rank.append(batches)
    steps = len(per_rank[0])
    served = [i for j in range(steps) for batches in per_rank for i in batches[j]]
    return served, [len(b) for b in per_rank]


CONFIG = st.fixed_dictionaries(
    {
        "world": st.integers(1, 5),
        "batch_size": st.integers(1, 9),
        "drop_last": st.booleans(),
        "seed": st.integers(-(2**63), 2**64 - 1),
        "shuffle": st.sampled_from([True, False]),
    }
)


@settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(n=st.integers(0, 70), first=CONFIG, then=CONFIG, data=st.data())
def test_exactly_once_and_resume_anywhere(n, first, then, data):
    ds = Plain(n)
    kw = {"shuffle": first["shuffle"], "seed": first["seed"]}
    ranks = loaders(
        ds, first["world"], batch_size=first["batch_size"], drop_last=first["drop_last"], **kw
    )
    served, counts = epoch(ranks)
    assert len(set(counts)) == 1
    check_exactly_once(served, n, ranks[0].padding, ranks[0].dropped)
    assert ranks[0].padding < first["world"]
    # the order itself does not depend on the world size
    alone, _ = epoch(loaders(ds, 1, batch_size=first["batch_size"], **kw))
    kept = n - ranks[0].dropped
    assert served[:kept] == alone[:kept]
    # save after `cut` steps, resume on another world size and batch size
    cut = data.draw(st.integers(0, max(0, counts[0] - 1)), label="cut")
    head, _ = epoch(
        loaders(
            ds, first["world"], batch_size=first["batch_size"], drop_last=first["drop_last"], **kw
        ),
        limit=cut,
    )
    saver = fastload.DataLoader(
        ds, batch_size=first["batch_size"], rank=0, world_size=first["world"], **kw
    )
    it = iter(saver)
    for _ in range(cut):
        next(it)
    state = saver.state_dict()
    assert state["consumed"] == min(n, cut * first["world"] * first["batch_size"])
    resumed = loaders(
        ds, then["world"], batch_size=then["batch_size"], drop_last=then["drop_last"], **kw
    )
    for loader in resumed:
        loader.load_state_dict(state)
    tail, counts2 = epoch(resumed)
    assert len(set(counts2)) == 1
    total = head[: state["consumed"]] + tail
    if state["consumed"] < n:
        check_exactly_once(total, n, resumed[0].padding, resumed[0].dropped)
        assert total[: n - resumed[0].dropped] == alone[: n - resumed[0].dropped]


FAST_CONFIG = CONFIG.map(lambda c: {**c, "batch_size": c["batch_size"] + 4})  # fewer batches


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    first=FAST_CONFIG, then=FAST_CONFIG, mode=st.sampled_from(["global", "block"]), data=st.data()
)
def test_fast_path_resumes_exactly(ids, first, then, mode, data):
    """The same on a fastload.Dataset, with the block shuffle too, and worker threads."""
    n = len(ids)
    kw = {"shuffle": mode if first["shuffle"] else False, "seed": first["seed"]}
    ranks = loaders(
        ids, first["world"], batch_size=first["batch_size"], drop_last=first["drop_last"], **kw
    )
    served, counts = epoch(ranks)
    check_exactly_once(served, n, ranks[0].padding, ranks[0].dropped)
    cut = data.draw(st.integers(0, max(0, counts[0] - 1)), label="cut")
    head, _ = epoch(ranks, limit=cut)  # the loaders' next epoch: resume that one
    state = ranks[0].state_dict()
    # after `cut` batches of epoch 1; with none yet, the end of epoch 0 (which resumes at 1)
    assert (state["epoch"], state["consumed"] == n) == ((1, False) if cut else (0, True))
    resumed = loaders(
        ids,
        then["world"],
        batch_size=then["batch_size"],
        drop_last=then["drop_last"],
        num_workers=2,
        worker_type="thread",
        **kw,
    )
    for loader in resumed:
        loader.load_state_dict(state)
    tail, counts2 = epoch(resumed)
    assert len(set(counts2)) == 1
    total = head[: state["consumed"]] + tail
    check_exactly_once(total, n, resumed[0].padding, resumed[0].dropped)
