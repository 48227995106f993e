"""ParallelContext: who this process is and which process groups it talks over.

The world of ``world_size`` ranks is laid out as ``cfg_size x par_size``:

* ``cfg_size`` is 2 when the classifier-free-guidance batch is split (``cfg_split: true``), else 1.
  Rank ``r`` computes CFG half ``cfg_rank = r // par_size`` (0: unconditional, 1: conditional).
* ``par_size`` ranks share one CFG half and split the model work between them (patches for the patch
  strategies, weight shards for tensor parallelism). ``par_rank = r % par_size``.

``par_group`` holds the ranks of one CFG half, ``cfg_group`` the ranks with the same ``par_rank``.
``par_async_group`` has the same ranks as ``par_group`` but its own communicator, for the asynchronous
exchanges of the displaced modes: collectives on one group run in issue order, so a blocking collective on
``par_group`` (the output gather) does not queue behind the asynchronous all-gathers still in flight.
A context without ``torch.distributed`` (single process, ``world_size == 1``) has all groups ``None`` and
every collective helper in :mod:`distri.parallel.comm` degenerates to a local copy.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from distri.parallel.ledger import CommLedger


@dataclass
class ParallelContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "none"
    cfg_size: int = 1
    par_group: object | None = None
    par_async_group: object | None = None
    cfg_group: object | None = None
    ledger: CommLedger = field(default_factory=CommLedger)

    @property
    def par_size(self) -> int:
        return self.world_size // self.cfg_size

    @property
    def par_rank(self) -> int:
        return self.rank % self.par_size

    @property
    def cfg_rank(self) -> int:
        return self.rank // self.par_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def make_context(
    rank: int,
    world_size: int,
    device: torch.device,
    backend: str,
    cfg_size: int = 1,
    timeout: datetime.timedelta | None = None,
) -> ParallelContext:
    """Build the context and its sub-groups. Every rank must call this, in the same order.

    ``torch.distributed`` must already be initialised when ``world_size > 1``. ``timeout``: the sub-groups'
    (``new_group`` does not inherit the world's; torch's default is 30 minutes).
    """
    if cfg_size not in (1, 2):
        raise ValueError(f"cfg_size must be 1 or 2, got {cfg_size}")
    if world_size % cfg_size:
        raise ValueError(f"world_size {world_size} is not divisible by cfg_size {cfg_size}")
    ctx = ParallelContext(rank=rank, world_size=world_size, device=device, backend=backend, cfg_size=cfg_size)
    if world_size == 1:
        return ctx
    par = world_size // cfg_size
    # new_group is collective over the whole world: every rank creates every group in the same order.
    for c in range(cfg_size):
        ranks = list(range(c * par, (c + 1) * par))
        g = dist.new_group(ranks, timeout=timeout) if len(ranks) < world_size else dist.group.WORLD
        ga = dist.new_group(ranks, timeout=timeout)
        if rank in ranks:
            ctx.par_group, ctx.par_async_group = g, ga
    if cfg_size > 1:
        for p in range(par):
            ranks = [c * par + p for c in range(cfg_size)]
            g = dist.new_group(ranks, timeout=timeout) if len(ranks) < world_size else dist.group.WORLD
            if rank in ranks:
                ctx.cfg_group = g
    return ctx
