"""Displaced patch parallelism (DistriFusion, Li et al., CVPR 2024) on a stock diffusers UNet.

The latent is split into ``n`` bands of rows, one per rank of ``ctx.par_group``. Inside the UNet:

* ``conv_in`` reads its band plus halo rows from the full input latent, which every rank holds (no exchange);
* every other 'same' convolution with a kernel above 1 gets its halo rows from the neighbouring bands
  (ledger kind ``conv_halo``);
* self-attention uses this band's queries against keys/values of the whole image (``attn_kv``);
  cross-attention exchanges nothing;
* GroupNorm normalises with whole-image statistics (``gn_stats``);
* the noise prediction is all-gathered at the end of every step (``output_gather``).

``mode`` (see ../shared/reference/distrifusion.md):

=====================  ======================================================================================
``corrected_async_gn``  default. After the warm-up, halos and K/V are the other bands' activations from the
                        previous step (sent asynchronously, overlapped with compute); GroupNorm uses stale
                        whole-image stats corrected by this band's fresh-minus-stale stats.
``stale_gn``            as above, GroupNorm with the stale whole-image stats.
``sync_gn``             as above, GroupNorm with a blocking exchange of fresh stats every step.
``separate_gn``         as above, GroupNorm with this band's stats alone.
``full_sync``           every exchange blocking, every step: exact (the paper's "Sync. PP").
``no_sync``             after the warm-up nothing is exchanged but the output: activations cached at the last
                        synchronous step are reused (the paper's "No Comm." latency bound).
=====================  ======================================================================================

The first ``warmup_steps + 1`` steps (step 0 plus ``warmup_steps`` extra, as in the paper) are synchronous.
Asynchronous exchanges are grouped into buckets of ``bucket_mb`` MiB, each one all-gather into buffers
allocated once.
"""

from __future__ import annotations

import torch
from torch import nn

from distri.parallel import comm
from distri.parallel.base import StrategyHandle, check_patch_split, unet_downsamples
from distri.parallel.context import ParallelContext
from distri.parallel.patch_layers import (
    GN_MODES,
    FirstConv2d,
    HaloConv2d,
    PatchGroupNorm,
    PatchSelfAttnProcessor,
    PatchState,
)

MODES = GN_MODES


class DisplacedPatchHandle(StrategyHandle):
    name = "displaced_patch"

    def __init__(
        self,
        unet: nn.Module,
        ctx: ParallelContext,
        mode: str,
        warmup_steps: int,
        bucket_mb: float,
        cfg_split: bool,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown displaced_patch mode {mode!r}; valid: {', '.join(MODES)}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
        super().__init__(unet, ctx, cfg_split=cfg_split)
        self.mode = mode
        self.exact = mode == "full_sync"
        self.warmup_steps = warmup_steps
        self.downsamples = unet_downsamples(unet)
        self.state = PatchState(ctx, mode, int(bucket_mb * 2**20))
        if ctx.par_size > 1:
            self._patch_modules()

    def _patch_modules(self) -> None:
        from diffusers.models.attention_processor import Attention

        st = self.state
        self.save_processors()
        targets: list[tuple[str, nn.Module]] = []
        for name, m in self.unet.named_modules():
            if name == "conv_in":
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


def apply(
    unet: nn.Module,
    ctx: ParallelContext,
    mode: str = "corrected_async_gn",
    warmup_steps: int = 4,
    bucket_mb: float = 16.0,
    cfg_split: bool = False,
) -> DisplacedPatchHandle:
    """Apply displaced patch parallelism over ``ctx.par_group``; ``handle.remove()`` restores the UNet."""
    return DisplacedPatchHandle(unet, ctx, mode, warmup_steps, bucket_mb, cfg_split)
