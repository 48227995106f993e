"""Naive patch parallelism: every rank denoises its own patch of the latent, independently.

Patches never see each other (no communication inside the denoiser); only the noise prediction is gathered at
the end of each step (ledger kind ``output_gather``). ``split_scheme``: ``row`` (bands of rows), ``col`` (bands
of columns) or ``alternate`` (rows on even steps, columns on odd ones: the baseline of the DistriFusion paper).
Fast, but seams and duplicated content appear at the patch borders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from distri.parallel import comm
from distri.parallel.base import StrategyHandle
from distri.parallel.context import ParallelContext
from distri.parallel.geometry import PatchStrategy, check_patch_split

SplitScheme = Literal["row", "col", "alternate"]


@dataclass
class NaivePatch(PatchStrategy):
    """Naive patch parallelism (no exchange inside the denoiser)."""

    name = "naive_patch"

    split_scheme: SplitScheme = "alternate"
    """row | col | alternate (rows on even steps, columns on odd: the paper's baseline)."""

    def split_dims(self) -> tuple[int, ...]:
        return {"row": (2,), "col": (3,)}.get(self.split_scheme, (2, 3))

    def apply(self, denoiser: nn.Module, ctx: ParallelContext) -> NaivePatchHandle:
        return NaivePatchHandle(denoiser, ctx, self.split_scheme, self.cfg_split)


class NaivePatchHandle(StrategyHandle):
    exact = False

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


STRATEGY = NaivePatch


def apply(denoiser: nn.Module, ctx: ParallelContext, **params) -> NaivePatchHandle:
    """``NaivePatch(**params).apply(denoiser, ctx)``; ``handle.remove()`` restores the denoiser."""
    return NaivePatch(**params).apply(denoiser, ctx)
