"""A user ``transform`` applied to each sample in the workers, on the fast path.

``DataLoader(ds, transform=fn)``: ``fn(sample) -> dict`` runs on every sample after it is read
(and its ``decode=`` images decoded), in the worker that fills its batch. ``sample`` maps each
field to its value: fixed-size fields and decoded images as numpy arrays (scalar fields as
numpy scalars; views of a buffer reused for the next batch: copy what you keep), other fields
as :meth:`fastload.Dataset.__getitem__` gives them. Of the dict it returns,
arrays, tensors and numbers become batch tensors (stacked: each must keep the shape and dtype
it had for the first sample); anything else travels as a list.

The loader learns the outputs' shapes by transforming the dataset's first record once, in the
main process, when it is built (the random states it uses are put back after). Workers read a
batch into a scratch buffer of the dataset's own layout, then write each transformed sample
into the batch slab.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["OutputField", "probe_outputs", "sample_at", "transform_rows"]


@dataclass(frozen=True)
class OutputField:
    """One field ``transform`` returns: fixed (``dtype`` and ``shape``, stacked into the
    slab) or listed (``dtype`` None)."""

    name: str
    dtype: np.dtype | None
    shape: tuple[int, ...] = ()


def _as_array(value: Any) -> np.ndarray | None:
    """``value`` as an array if it is one (a tensor, an ndarray, a number), else None."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value if value.dtype != object else None
    if isinstance(value, (bool, int, float, np.generic)) and not isinstance(value, np.str_):
        return np.asarray(value)
    return None


def _checked_mapping(out: Any, record: int) -> Mapping[str, Any]:
    if not isinstance(out, Mapping) or not all(isinstance(k, str) for k in out):
        raise TypeError(
            f"transform= must return a dict of field name -> value, got "
            f"{type(out).__name__} for dataset record {record}"
        )
    return out


def sample_at(
    inputs: dict[str, np.ndarray], listed: dict[str, Any], names: tuple[str, ...], k: int
) -> dict[str, Any]:
    """Row ``k`` of a batch read into ``inputs`` (fixed fields) and ``listed`` (the rest),
    as the dict a transform is given."""
    return {name: inputs[name][k] if name in inputs else listed[name][k] for name in names}


def probe_outputs(fn: Callable[[dict], Any], sample: dict, record: int) -> tuple[OutputField, ...]:
    """The fields ``fn`` returns for ``sample`` (dataset record ``record``), with the random
    states of ``random``, numpy and torch put back afterwards (the probe must not change
    the order a torch-style sampler draws)."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        out = _checked_mapping(fn(sample), record)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    fields = []
    for name, value in out.items():
        array = _as_array(value)
        fields.append(
            OutputField(name, None)
            if array is None
            else OutputField(name, array.dtype, tuple(array.shape))
        )
    return tuple(fields)


def transform_rows(
    fn: Callable[[dict], Any],
    outputs: tuple[OutputField, ...],
    inputs: dict[str, np.ndarray],
    listed: dict[str, Any],
    names: tuple[str, ...],
    indices: np.ndarray,
    rows: range,
    skipped: set[int],
    out: dict[str, np.ndarray],
) -> dict[str, list]:
    """Transform rows ``rows`` of a batch read into ``inputs`` (fixed fields) and ``listed``
    (the rest, indexed from ``rows.start``), writing fixed outputs into ``out``; returns the
    listed outputs (None for a skipped row, which is left as zeros)."""
    lists: dict[str, list] = {f.name: [] for f in outputs if f.dtype is None}
    for k, row in enumerate(rows):
        if row in skipped:
            for name in lists:
                lists[name].append(None)
            continue
        record = int(indices[k])
        try:
            result = _checked_mapping(fn(sample_at(inputs, listed, names, k)), record)
        except Exception as e:
            add_note = getattr(e, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(f"in transform= of dataset record {record}")
            raise
        for f in outputs:
            if f.name not in result:
                raise KeyError(
                    f"transform= returned no {f.name!r} for dataset record {record} "
                    f"(it did for the first record)"
                )
            value = result[f.name]
            if f.dtype is None:
                lists[f.name].append(value)
                continue
            array = _as_array(value)
            if array is None or array.shape != f.shape or array.dtype != f.dtype:
                got = f"{array.dtype} {array.shape}" if array is not None else type(value).__name__
                raise ValueError(
                    f"transform= returned {f.name!r} as {got} for dataset record {record}, "
                    f"but as {f.dtype} {f.shape} for the first record: a batch tensor needs "
                    "the same shape and dtype from every sample (pad or resize it, or "
                    "return it as a list)"
                )
            out[f.name][k] = array
    return lists
