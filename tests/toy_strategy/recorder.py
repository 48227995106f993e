"""A strategy defined outside distri, as a researcher's own repository would: it splits nothing (every rank
runs the whole denoiser) and records each denoiser call, one line per call in ``<record_dir>/rank<r>.txt``.

Its config is ``conf/strategy/recorder.yaml`` next to this file, found through Hydra's search path
(``hydra.searchpath=[pkg://tests.toy_strategy.conf]``) and selected with ``strategy=recorder``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distri.parallel.base import StrategyHandle
from distri.parallel.context import ParallelContext
from distri.parallel.strategy import Fit, Strategy


@dataclass
class Recorder(Strategy):
    """Runs the stock denoiser on every rank and writes one line per denoiser call."""

    name = "recorder"

    record_dir: str = ""
    """Folder of the per-rank call logs (required)."""

    def problems(self, fit: Fit) -> list[str]:
        return [] if self.record_dir else ["strategy.record_dir must name a folder for the call logs"]

    def apply(self, denoiser: nn.Module, ctx: ParallelContext) -> RecorderHandle:
        return RecorderHandle(denoiser, ctx, Path(self.record_dir) / f"rank{ctx.rank}.txt")


class RecorderHandle(StrategyHandle):
    def __init__(self, denoiser: nn.Module, ctx: ParallelContext, path: Path) -> None:
        super().__init__(denoiser, ctx)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def split_input(self, sample: torch.Tensor) -> torch.Tensor:
        with self.path.open("a") as f:
            f.write(f"step {self.step} latent {list(sample.shape)}\n")
        return sample
