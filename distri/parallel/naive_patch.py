"""Naive patch parallelism: every rank denoises its own patch of the latent, independently.

Patches never see each other (no communication inside the denoiser); only the noise prediction is gathered at
the end of each step (ledger kind ``output_gather``). ``split_scheme``: ``row`` (bands of rows), ``col`` (bands
of columns) or ``alternate`` (rows on even steps, columns on odd ones: the baseline of the DistriFusion paper).
Fast, but seams and duplicated content appear at the patch borders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from distri.parallel.geometry import PatchStrategy

if TYPE_CHECKING:
    from torch import nn

    from distri.parallel.context import ParallelContext
    from distri.parallel.naive_patch_handle import NaivePatchHandle

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
        from distri.parallel.naive_patch_handle import NaivePatchHandle

        return NaivePatchHandle(denoiser, ctx, self.split_scheme, self.cfg_split)


STRATEGY = NaivePatch


def apply(denoiser: nn.Module, ctx: ParallelContext, **params) -> NaivePatchHandle:
    """``NaivePatch(**params).apply(denoiser, ctx)``; ``handle.remove()`` restores the denoiser."""
    return NaivePatch(**params).apply(denoiser, ctx)
