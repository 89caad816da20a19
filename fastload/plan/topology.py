"""This process's place in a DDP job: rank, world size and local rank.

From torch.distributed when a process group is initialised, else from the standard variables
RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun and most launchers), else a single process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Topology", "current_topology"]


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is out of range for world_size {self.world_size}")
        if self.local_rank < 0:
            raise ValueError(f"local_rank must be >= 0, got {self.local_rank}")


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def current_topology(env: Mapping[str, str] | None = None) -> Topology:
    """The current process's :class:`Topology`."""
    env = os.environ if env is None else env
    local_rank = _env_int(env, "LOCAL_RANK", 0)
    # An initialised process group implies torch.distributed is already imported: looking in
    # sys.modules avoids importing torch (seconds) in processes that never use it.
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return Topology(dist.get_rank(), dist.get_world_size(), local_rank)
    try:
        return Topology(_env_int(env, "RANK", 0), _env_int(env, "WORLD_SIZE", 1), local_rank)
    except ValueError as e:
        raise ValueError(f"{e} (from the RANK / WORLD_SIZE environment variables)") from None
