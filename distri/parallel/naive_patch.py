"""Naive patch parallelism: every rank denoises its own patch of the latent, independently.

Patches never see each other (no communication inside the UNet); only the noise prediction is gathered at the
end of each step (ledger kind ``output_gather``). ``split_scheme``: ``row`` (bands of rows), ``col`` (bands of
columns) or ``alternate`` (rows on even steps, columns on odd ones: the baseline of the DistriFusion paper).
Fast, but seams and duplicated content appear at the patch borders.
"""

from __future__ import annotations

import torch
from torch import nn

from distri.parallel import comm
from distri.parallel.base import StrategyHandle, check_patch_split, unet_downsamples
from distri.parallel.context import ParallelContext

SPLIT_SCHEMES = ("row", "col", "alternate")


class NaivePatchHandle(StrategyHandle):
    name = "naive_patch"
    exact = False

    def __init__(self, unet: nn.Module, ctx: ParallelContext, split_scheme: str, cfg_split: bool) -> None:
        if split_scheme not in SPLIT_SCHEMES:
            raise ValueError(f"unknown split_scheme {split_scheme!r}; valid: {', '.join(SPLIT_SCHEMES)}")
        super().__init__(unet, ctx, cfg_split=cfg_split)
        self.split_scheme = split_scheme
        self.downsamples = unet_downsamples(unet)

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


def apply(unet: nn.Module, ctx: ParallelContext, split_scheme: str = "row", cfg_split: bool = False):
    """Apply naive patch parallelism over ``ctx.par_group``; ``handle.remove()`` restores the UNet."""
    return NaivePatchHandle(unet, ctx, split_scheme, cfg_split)
