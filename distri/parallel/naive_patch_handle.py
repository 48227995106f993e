"""What :class:`distri.parallel.naive_patch.NaivePatch` does to a denoiser (torch; the declaration is torch-free)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from distri.parallel import comm
from distri.parallel.base import StrategyHandle
from distri.parallel.context import ParallelContext
from distri.parallel.geometry import check_patch_split

if TYPE_CHECKING:
    from distri.parallel.naive_patch import SplitScheme


class NaivePatchHandle(StrategyHandle):
    def __init__(
        self, unet: nn.Module, ctx: ParallelContext, split_scheme: SplitScheme, cfg_split: bool
    ) -> None:
        super().__init__(unet, ctx, cfg_split=cfg_split)
        self.split_scheme = split_scheme
        self.downsamples = self.adapter.downsamples

    def _dim(self) -> int:
        if self.split_scheme == "alternate":
            return 2 if self.step % 2 == 0 else 3
        return 2 if self.split_scheme == "row" else 3

    def split_input(self, sample: torch.Tensor) -> torch.Tensor:
        n, r, dim = self.ctx.par_size, self.ctx.par_rank, self._dim()
        if n == 1:
            return sample
        check_patch_split(
            sample.shape[dim], n, self.downsamples, "latent height" if dim == 2 else "latent width"
        )
        return sample.chunk(n, dim=dim)[r]

    def gather_output(self, out: torch.Tensor) -> torch.Tensor:
        return comm.all_gather(out, self.ctx.par_group, self.ctx.ledger, "output_gather", dim=self._dim())
