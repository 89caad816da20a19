"""The random state a sampler draws an epoch's order from, saved and put back: a sampler
with ``state_dict`` / ``load_state_dict`` through them, else the torch Generator it draws from,
else torch's global generator (see torch_order.py). States travel as base64 text: JSON-safe.
"""

from __future__ import annotations

import base64
import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import BatchSampler, DistributedSampler, SequentialSampler

from ..errors import PlanStateError

__all__ = ["SamplerRng", "SAMPLER_KINDS", "encode_state", "decode_state"]


#: What a saved sampler state of each kind was saved from.
SAMPLER_KINDS = {
    "none": "no random state",
    "sampler": "a state_dict of its own",
    "generator": "a torch.Generator",
    "global": "torch's global generator",
}


def encode_state(t: torch.Tensor) -> str:
    """A generator's state (a uint8 tensor) as JSON-safe text."""
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def decode_state(text: str, field_name: str) -> torch.Tensor:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError, AttributeError):
        raise PlanStateError(
            f"loader state is corrupted: {field_name!r} is not a saved generator state"
        ) from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def _stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    )


_FIXED = (SequentialSampler, DistributedSampler, list, tuple, range)  # no random state


class SamplerRng:
    """The random state an index sampler draws its epoch's order from, to save and restore
    (kind ``"none"``: torch's samplers whose order is fixed, DistributedSampler's by its
    seed and epoch)."""

    def __init__(self, index_sampler: Any) -> None:
        inner = getattr(index_sampler, "sampler", None)
        self.owner: Any = None
        plain = type(index_sampler) is BatchSampler or inner is None
        if type(inner if inner is not None else index_sampler) in _FIXED and plain:
            self.kind = "none"
        elif _stateful(index_sampler):
            self.kind, self.owner = "sampler", index_sampler
        elif inner is not None and _stateful(inner):
            self.kind, self.owner = "sampler", inner
        else:
            gen = next(
                (
                    g
                    for g in (
                        getattr(index_sampler, "generator", None),
                        getattr(inner, "generator", None),
                    )
                    if isinstance(g, torch.Generator)
                ),
                None,
            )
            self.kind, self.owner = ("generator", gen) if gen is not None else ("global", None)
        # DistributedSampler and the like: their epoch picks the order
        self.epochs: Any = next(
            (
                s
                for s in (index_sampler, inner)
                if callable(getattr(s, "set_epoch", None))
                and isinstance(getattr(s, "epoch", None), int)
            ),
            None,
        )

    def capture(self) -> dict[str, Any]:
        """The state now, JSON-safe where the sampler's own state is."""
        if self.kind == "sampler":
            state: Any = copy.deepcopy(self.owner.state_dict())
        elif self.kind == "generator":
            state = encode_state(self.owner.get_state())
        elif self.kind == "global":
            state = encode_state(torch.get_rng_state())
        else:
            state = None
        return {"kind": self.kind, "state": state}

    def sampler_epoch(self) -> int | None:
        return None if self.epochs is None else int(self.epochs.epoch)

    def check(self, saved: Mapping[str, Any]) -> None:
        """``saved`` (from :meth:`capture`) is a state this sampler can take."""
        if saved["kind"] != self.kind:
            raise PlanStateError(
                f"loader state mismatch: its sampler's random state is of kind "
                f"{saved['kind']!r} (saved from {SAMPLER_KINDS[saved['kind']]}), this loader's "
                f"sampler has {SAMPLER_KINDS[self.kind]}: build the loader with the sampler (and "
                "generator=) of the run that saved it"
            )
        if self.kind in ("generator", "global"):
            decode_state(saved["state"], "sampler")

    @contextlib.contextmanager
    def restored(self, saved: Mapping[str, Any]) -> Iterator[None]:
        """Within the block, the sampler draws as it did when ``saved`` was captured. torch's
        global generator is put back as it was afterwards (it is the program's own)."""
        if self.kind == "sampler":
            self.owner.load_state_dict(copy.deepcopy(saved["state"]))
            yield
        elif self.kind == "generator":
            self.owner.set_state(decode_state(saved["state"], "sampler"))
            yield
        elif self.kind == "none":
            yield
        else:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(decode_state(saved["state"], "sampler"))
                yield
