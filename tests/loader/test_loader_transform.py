"""transform=: a user callable run on each sample in the workers (fast path), its outputs
stacked into slab tensors or carried as lists; errors name the record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastload

from .loadertools import N, record

MODES = [(0, "process", None), (2, "process", None), (2, "thread", None), (2, "process", "spawn")]


def shift(sample: dict) -> dict:
    """Changes dtypes and shapes, adds a list-valued field, keeps a scalar."""
    return {
        "i": sample["i"],
        "x2": torch.from_numpy(sample["x"].astype(np.float64) * 2).reshape(3, 1),
        "head": sample["tokens"][:4].astype(np.int32) + 1,
        "label": f"{sample['s']}|{len(sample['b'])}",
        "odd": bool(sample["i"] % 2),
    }


@pytest.mark.parametrize("num_workers,worker_type,context", MODES)
def test_transformed_batches_match_the_transform_of_each_record(
    ds, num_workers, worker_type, context
):
    loader = fastload.DataLoader(
        ds,
        batch_size=7,
        shuffle=True,
        num_workers=num_workers,
        worker_type=worker_type,
        multiprocessing_context=context,
        generator=torch.Generator().manual_seed(4),
        transform=shift,
    )
    order = torch.cat(
        list(
            torch.utils.data.DataLoader(
                range(N), batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(4)
            )
        )
    )
    seen = []
    for batch in loader:
        assert list(batch) == ["i", "x2", "head", "label", "odd"]
        n = len(batch["i"])
        assert batch["x2"].dtype == torch.float64 and batch["x2"].shape == (n, 3, 1)
        assert batch["head"].dtype == torch.int32 and batch["head"].shape == (n, 4)
        assert batch["odd"].dtype == torch.bool
        for k, i in enumerate(batch["i"].tolist()):
            r = record(i)
            assert batch["x2"][k, :, 0].tolist() == (r["x"].astype(np.float64) * 2).tolist()
            assert batch["head"][k].tolist() == (r["tokens"][:4].astype(np.int32) + 1).tolist()
            assert batch["label"][k] == f"{r['s']}|{len(r['b'])}"
            assert batch["odd"][k].item() == bool(i % 2)
        seen += batch["i"].tolist()
    assert seen == order.tolist()  # torch's order, transform or not


def test_outputs_must_keep_their_shape(ds1):
    def ragged(sample):
        return {"v": np.zeros(1 + int(sample["i"]) // 50)}

    loader = fastload.DataLoader(ds1, batch_size=10, num_workers=2, transform=ragged)
    with pytest.raises(
        ValueError,
        match=r"'v' as float64 \(2,\) for dataset record 50, but "
        r"as float64 \(1,\) for the first record",
    ):
        list(loader)


def _fail_on_13(sample):
    if int(sample["i"]) == 13:
        raise ArithmeticError("thirteen")
    return {"i": sample["i"]}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_exception_in_the_transform_names_the_record(ds1, num_workers):
    loader = fastload.DataLoader(ds1, batch_size=10, num_workers=num_workers, transform=_fail_on_13)
    with pytest.raises(ArithmeticError, match="thirteen") as info:
        list(loader)
    text = str(info.value) + "".join(getattr(info.value, "__notes__", []))
    assert "in transform= of dataset record 13" in text


def _noisy(sample):
    torch.rand(5)  # uses the global generator
    np.random.rand()
    return {"i": sample["i"]}


def test_probing_the_transform_leaves_the_random_state_alone(ds1):
    """The loader transforms the first record once when built; without a generator the
    shuffle draws from the global state, which must not have moved."""
    torch.manual_seed(11)
    np.random.seed(11)
    want = [b["i"].tolist() for b in fastload.DataLoader(ds1, batch_size=10, shuffle=True)]
    torch.manual_seed(11)
    np.random.seed(11)
    got = [
        b["i"].tolist()
        for b in fastload.DataLoader(ds1, batch_size=10, shuffle=True, transform=_noisy)
    ]
    assert got == want


def test_transform_needs_the_fast_path_and_a_callable(ds1):
    with pytest.raises(ValueError, match="transform= needs a fastload.Dataset"):
        fastload.DataLoader(list(range(5)), batch_size=2, transform=shift)
    with pytest.raises(ValueError, match="transform= needs a fastload.Dataset"):
        fastload.DataLoader(ds1, batch_size=2, collate_fn=list, transform=shift)
    with pytest.raises(TypeError, match="transform must be callable"):
        fastload.DataLoader(ds1, batch_size=2, transform={"i": 1})
    with pytest.raises(TypeError, match="must return a dict"):
        fastload.DataLoader(ds1, batch_size=2, transform=lambda s: [s["i"]])


def _draw(sample):
    return {"i": sample["i"], "np": np.random.randint(1 << 30), "torch": torch.randint(1 << 30, ())}


def test_a_transform_draws_from_generators_seeded_per_worker_as_torch_seeds_them(ds1):
    """Worker w's generators start from torch's seeds for it: numpy from
    _generate_state(base, w), torch from base + w, base drawn from the loader's generator."""
    from torch.utils.data._utils.worker import _generate_state

    loader = fastload.DataLoader(
        ds1,
        batch_size=10,
        num_workers=2,
        transform=_draw,
        generator=torch.Generator().manual_seed(5),
    )
    batches = list(loader)
    base = int(
        torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(5))
    )
    # each worker's first draw starts one of the batches (the first it filled)
    firsts = {(b["np"][0].item(), b["torch"][0].item()) for b in batches}
    for w in (0, 1):
        want_np = np.random.RandomState(_generate_state(base, w)).randint(1 << 30)
        want_torch = torch.randint(1 << 30, (), generator=torch.Generator().manual_seed(base + w))
        assert (want_np, want_torch.item()) in firsts
