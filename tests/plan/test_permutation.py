"""Permutation: the epoch's global order, keyed from (seed, epoch)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fastload.plan import Permutation, derive_key


def test_is_a_permutation_and_random_access():
    p = Permutation(1000, seed=3, epoch=1)
    order = p[np.arange(1000)]
    assert order.dtype == np.int64
    assert np.array_equal(np.sort(order), np.arange(1000))
    assert p[17] == order[17] and isinstance(p[17], int)
    assert np.array_equal(p[[5, 3, 5]], order[[5, 3, 5]])
    assert np.array_equal(p.inverse(order), np.arange(1000))
    assert p.inverse(int(order[9])) == 9


def test_no_shuffle_is_the_identity():
    p = Permutation(50, seed=3, shuffle=False)
    assert np.array_equal(p[np.arange(50)], np.arange(50))
    assert np.array_equal(p.inverse(np.arange(50)), np.arange(50))


def test_differs_by_seed_and_epoch_but_not_by_run():
    n = 10_000
    base = Permutation(n, seed=1, epoch=0)[np.arange(n)]
    assert np.array_equal(base, Permutation(n, seed=1, epoch=0)[np.arange(n)])
    for other in (Permutation(n, seed=2, epoch=0), Permutation(n, seed=1, epoch=1)):
        values = other[np.arange(n)]
        assert np.mean(values == base) < 0.01
        assert abs(np.corrcoef(values, base)[0, 1]) < 5 / np.sqrt(n)  # unrelated orders


def test_seed_taken_modulo_2_64_like_torch():
    assert derive_key(-1, 0, 1) == derive_key(2**64 - 1, 0, 1)
    assert derive_key(0, 0, 1) != derive_key(0, 0, 2) != derive_key(0, 1, 1)


def test_same_order_in_another_process():
    code = (
        "import numpy as np; from fastload.plan import Permutation;"
        "print(Permutation(10**9, seed=77, epoch=5)[np.arange(0, 10**9, 10**7)].tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = Permutation(10**9, seed=77, epoch=5)[np.arange(0, 10**9, 10**7)].tolist()
    assert out.stdout.strip() == str(here)


def test_bad_positions_and_arguments():
    p = Permutation(10, seed=0)
    for bad in (10, -1, [0, 10], np.array([3, -2])):
        with pytest.raises(IndexError, match="out of range for an order of 10"):
            p[bad]
    with pytest.raises(TypeError, match="integers"):
        p[np.array([1.5])]
    with pytest.raises(ValueError, match="1-D"):
        p[np.zeros((2, 2), dtype=np.int64)]
    with pytest.raises(ValueError, match="n must be >= 0"):
        Permutation(-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        Permutation(10, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        Permutation(10, epoch=-1)
    empty = Permutation(0)
    assert empty[np.array([], dtype=np.int64)].shape == (0,)
