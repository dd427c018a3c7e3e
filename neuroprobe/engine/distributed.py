"""Several processes (``torchrun``) writing disjoint chunks of one store."""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch.distributed as torch_dist


@dataclass
class Distributed:
    """Rank, world size and a barrier; a single process when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not torch_dist.is_initialized():
            # gloo only synchronises processes here (no tensors are exchanged), on CPU and GPU alike.
            torch_dist.init_process_group("gloo", timeout=_dt.timedelta(hours=48))
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()
