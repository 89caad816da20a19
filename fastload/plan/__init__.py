"""The plan: which records each DDP rank and worker reads in an epoch, in which order.

Deterministic from (seed, epoch), random access, with no per-sample array.

| module | job |
|---|---|
| `permutation.py` | `Permutation`: keyed bijection of [0, n) (C++ Feistel); key derivation |
| `block_shuffle.py` | `BlockShuffle`: shuffle blocks, then records within windows of blocks |
| `partition.py` | `Partition`: the canonical DDP split into equal per-rank batches |
| `topology.py` | rank / world size from torch.distributed or the environment |
| `state.py` | `EpochPlan`: one rank's batches, `state_dict` and resumption |
| `mix_order.py` | `MixOrder`: one epoch's weighted, stratified draws from several datasets |
"""

from .block_shuffle import BlockShuffle
from .mix_order import MixOrder
from .partition import Partition
from .permutation import Permutation, derive_key
from .state import EpochPlan, PlanStateError
from .topology import Topology, current_topology

__all__ = [
    "BlockShuffle",
    "EpochPlan",
    "MixOrder",
    "Partition",
    "Permutation",
    "PlanStateError",
    "Topology",
    "current_topology",
    "derive_key",
]
