"""Real DDP ranks (torch.distributed on gloo, loopback) with worker processes: every sample
exactly once per epoch over all ranks (plus the documented padding), equal batch counts, and a
checkpoint taken with 4 ranks x 2 workers resumed with 2 ranks x 3 workers (docs/reliability.md
E4-E7)."""

from __future__ import annotations

import pytest

from .ddptools import check_exactly_once, in_step_order, launch, write_index_dataset

pytestmark = pytest.mark.timeout(240)

N = 103  # not a multiple of any world x batch used: the tail is padded


def test_four_ranks_then_resume_on_two_with_other_worker_counts(tmp_path):
    path = str(write_index_dataset(tmp_path / "ds", N))
    base = {"path": path, "batch_size": 4, "seed": 77, "drop_last": False}

    # 4 ranks x 2 workers: two whole epochs, and a state saved after step 2 of epoch 0
    logs = launch(
        4, {**base, "workers": 2, "epochs": [0, 1], "save_at": 2, "out": str(tmp_path / "r4")}
    )
    assert [log["topology"] for log in logs] == [[r, 4] for r in range(4)]
    for e in range(2):
        per_rank = [log["epochs"][e] for log in logs]
        assert len({len(b) for b in per_rank}) == 1  # equal batch counts: DDP cannot hang
        padding, dropped = logs[0]["padding"][e]
        assert padding == 1 and dropped == 0  # 103 = 6 steps of 16 + 7, padded to 8
        check_exactly_once(in_step_order(per_rank), N, padding, dropped)
    assert logs[0]["all_counts"] == [len(logs[0]["epochs"][0])] * 4
    assert in_step_order([log["epochs"][0] for log in logs]) != in_step_order(
        [log["epochs"][1] for log in logs]
    )  # a new order each epoch
    states = [log["state"] for log in logs]
    assert all(s == states[0] for s in states) and states[0]["consumed"] == 3 * 16

    # resume epoch 0 on 2 ranks x 3 workers, then run epoch 1 whole on them
    resumed = launch(
        2, {**base, "workers": 3, "epochs": [0, 1], "state": states[0], "out": str(tmp_path / "r2")}
    )
    before = in_step_order([log["epochs"][0][:3] for log in logs])
    after = in_step_order([log["epochs"][0] for log in resumed])
    padding, dropped = resumed[0]["padding"][0]
    assert padding == 1  # 55 left = 6 steps of 8 + 7, padded to 8
    assert len({len(log["epochs"][0]) for log in resumed}) == 1
    check_exactly_once(before + after, N, padding, 0)  # padding repeats the first samples

    # the order of epoch 1 does not depend on the world size: same samples, same sequence
    two = in_step_order([log["epochs"][1] for log in resumed])
    four = in_step_order([log["epochs"][1] for log in logs])
    assert two[:96] == four[:96]  # up to the first padded tail
    check_exactly_once(two, N, resumed[0]["padding"][1][0], 0)


def test_two_ranks_block_shuffle_drop_last(tmp_path):
    """Compressed data, block shuffle, drop_last: the tail is dropped on both ranks alike."""
    path = str(write_index_dataset(tmp_path / "ds", N, compression="zstd"))
    logs = launch(
        2,
        {
            "path": path,
            "batch_size": 5,
            "seed": 3,
            "drop_last": True,
            "shuffle": "block",
            "workers": 2,
            "epochs": [0],
            "out": str(tmp_path / "r2"),
        },
    )
    per_rank = [log["epochs"][0] for log in logs]
    assert [len(b) for b in per_rank] == [10, 10]  # 103 = 10 steps of 10 + 3 dropped
    assert all(len(batch) == 5 for b in per_rank for batch in b)
    padding, dropped = logs[0]["padding"][0]
    assert (padding, dropped) == (0, 3)
    check_exactly_once(in_step_order(per_rank), N, padding, dropped)
