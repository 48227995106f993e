"""Strategy ``none``: the stock denoiser on every rank; with ``cfg_split`` the two CFG halves run on two ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from distri.parallel.strategy import Fit, Strategy

if TYPE_CHECKING:
    from torch import nn

    from distri.parallel.base import StrategyHandle
    from distri.parallel.context import ParallelContext


@dataclass
class NoStrategy(Strategy):
    """The single-device run (or, with ``cfg_split``, the CFG halves on two ranks)."""

    name = "none"
    identity = True

    def exact(self) -> bool:
        return True

    def apply(self, denoiser: nn.Module, ctx: ParallelContext) -> StrategyHandle:
        from distri.parallel.base import StrategyHandle

        return StrategyHandle(denoiser, ctx, cfg_split=self.cfg_split)

    def degrees(self, fit: Fit, limit: int = 64) -> list[int]:
        return [1]

    def misfit(self, fit: Fit, degree: int) -> str | None:
        if degree == 1:
            return None
        n = fit.world_size
        hint = "world_size=1, or strategy.cfg_split=true" if n == 2 else "world_size=1"
        return f"strategy=none runs the whole UNet on one rank: with world_size={n} use {hint}"


STRATEGY = NoStrategy


def apply(denoiser: nn.Module, ctx: ParallelContext, **params) -> StrategyHandle:
    """``NoStrategy(**params).apply(denoiser, ctx)``."""
    return NoStrategy(**params).apply(denoiser, ctx)
