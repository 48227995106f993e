"""What :class:`distri.parallel.displaced_patch.DisplacedPatch` does to a denoiser: the patched layers of
:mod:`distri.parallel.patch_layers` and the phase of each step (torch; the declaration is torch-free)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from distri.parallel import comm
from distri.parallel.base import StrategyHandle
from distri.parallel.context import ParallelContext
from distri.parallel.geometry import check_patch_split
from distri.parallel.patch_layers import (
    FirstConv2d,
    HaloConv2d,
    PatchGroupNorm,
    PatchSelfAttnProcessor,
    PatchState,
)

if TYPE_CHECKING:
    from distri.parallel.displaced_patch import DisplacedPatch


class DisplacedPatchHandle(StrategyHandle):
    def __init__(self, unet: nn.Module, ctx: ParallelContext, params: DisplacedPatch) -> None:
        super().__init__(unet, ctx, cfg_split=params.cfg_split)
        self.mode = params.mode
        self.warmup_steps = params.warmup_steps
        self.downsamples = self.adapter.downsamples
        self.state = PatchState(ctx, params.mode, int(params.bucket_mb * 2**20))
        if ctx.par_size > 1:
            self._patch_modules()

    def _patch_modules(self) -> None:
        from diffusers.models.attention_processor import Attention

        st = self.state
        self.save_processors()
        targets: list[tuple[str, nn.Module]] = []
        for name, m in self.unet.named_modules():
            if name == self.adapter.input_layer:
                targets.append((name, FirstConv2d(m, st)))
            elif isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:
                targets.append((name, HaloConv2d(m, st, name)))
            elif isinstance(m, nn.GroupNorm):
                targets.append((name, PatchGroupNorm(m, st, name)))
            elif isinstance(m, Attention) and not m.is_cross_attention:
                m.set_processor(PatchSelfAttnProcessor(st, name))
        for name, new in targets:
            self.replace_module(name, new)

    def reset(self) -> None:
        super().reset()
        self.state.restart()

    def phase(self, step: int) -> str:
        if self.mode == "full_sync" or step <= self.warmup_steps:
            return "sync"
        return "frozen" if self.mode == "no_sync" else "async"

    def split_input(self, sample: torch.Tensor) -> torch.Tensor:
        if self.ctx.par_size > 1:
            check_patch_split(sample.shape[2], self.ctx.par_size, self.downsamples)
        self.state.phase = self.phase(self.step)
        return sample  # conv_in (FirstConv2d) cuts this rank's band out of the full latent

    def gather_output(self, out: torch.Tensor) -> torch.Tensor:
        return comm.all_gather(out, self.ctx.par_group, self.ctx.ledger, "output_gather", dim=2)

    def end_step(self) -> None:
        if self.state.phase == "async":
            self.state.flush()

    def remove(self) -> None:
        self.state.restart()
        super().remove()
