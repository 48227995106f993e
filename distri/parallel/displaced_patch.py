"""Displaced patch parallelism (DistriFusion, Li et al., CVPR 2024) on a stock denoiser (e.g. a diffusers UNet).

The latent is split into ``n`` bands of rows, one per rank of ``ctx.par_group``. Inside the UNet:

* the input layer (the adapter's ``input_layer``: a UNet's ``conv_in``) reads its band plus halo rows from the full input latent, which every rank holds (no exchange);
* every other 'same' convolution with a kernel above 1 gets its halo rows from the neighbouring bands
  (ledger kind ``conv_halo``);
* self-attention uses this band's queries against keys/values of the whole image (``attn_kv``);
  cross-attention exchanges nothing;
* GroupNorm normalises with whole-image statistics (``gn_stats``);
* the noise prediction is all-gathered at the end of every step (``output_gather``).

``mode`` (the paper's names; GroupNorm statistics ``s = (E[x], E[x^2])`` per band ``i`` of ``n``, this rank's
band ``r``, ``s~`` the previous step's; formulas in :class:`distri.parallel.patch_layers.PatchGroupNorm`):

=====================  ======================================================================================
``corrected_async_gn``  default. After the warm-up, halos and K/V of the other bands are the previous step's
                        (sent asynchronously, overlapped with compute); GroupNorm uses
                        ``mean_i s~_i + (s_r - s~_r)``, this band's variance where that variance is negative.
``stale_gn``            as above, GroupNorm with ``(s_r + sum_{i != r} s~_i) / n``.
``sync_gn``             as above, GroupNorm statistics ``mean_i s_i`` through a blocking exchange every step.
``separate_gn``         as above, GroupNorm with this band's statistics ``s_r`` alone.
``full_sync``           every exchange blocking, every step: exact (the paper's "Sync. PP").
``no_sync``             after the warm-up nothing is exchanged but the output: halos and K/V cached at the last
                        synchronous step are reused, GroupNorm uses ``s_r`` (as the reference code does); the
                        paper's "No Comm." latency bound.
=====================  ======================================================================================

The first ``warmup_steps + 1`` steps (step 0 plus ``warmup_steps`` extra, as in the paper) of every pipeline
call are synchronous (a new call is recognised by its timesteps, see :class:`distri.parallel.base.StrategyHandle`).
Asynchronous exchanges are grouped into buckets of ``bucket_mb`` MiB, each one all-gather into buffers
allocated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from distri.parallel.geometry import PatchStrategy

if TYPE_CHECKING:
    from torch import nn

    from distri.parallel.context import ParallelContext
    from distri.parallel.displaced_patch_handle import DisplacedPatchHandle

Mode = Literal["corrected_async_gn", "stale_gn", "sync_gn", "separate_gn", "full_sync", "no_sync"]


@dataclass
class DisplacedPatch(PatchStrategy):
    """Displaced patch parallelism (see the module docstring)."""

    name = "displaced_patch"

    mode: Mode = "corrected_async_gn"
    """corrected_async_gn | stale_gn | sync_gn | separate_gn | full_sync (exact) | no_sync (No Comm. bound)."""
    warmup_steps: int = 4
    """Synchronous steps after step 0 (the paper's 4 + 1); at most the number of steps."""
    bucket_mb: float = 16.0
    """Size of one asynchronous all-gather bucket, MiB."""

    def invalid(self) -> list[str]:
        bad = super().invalid()
        if self.warmup_steps < 0:
            bad.append(f"strategy.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.bucket_mb <= 0:
            bad.append(f"strategy.bucket_mb must be > 0, got {self.bucket_mb}")
        return bad

    def problems(self, fit) -> list[str]:
        if self.warmup_steps <= fit.steps:
            return []
        return [
            f"strategy.warmup_steps={self.warmup_steps} is longer than the sampling ({fit.steps} steps); "
            f"use at most {fit.steps} (warmup_steps >= steps runs every step synchronously)"
        ]

    def exact(self) -> bool:
        return self.mode == "full_sync"

    def sync_steps(self, steps: int) -> int:
        return steps if self.mode == "full_sync" else min(steps, self.warmup_steps + 1)

    def dryrun_steps(self) -> int:
        """The synchronous warm-up, the first asynchronous step and a steady one."""
        return self.warmup_steps + 3

    def apply(self, denoiser: nn.Module, ctx: ParallelContext) -> DisplacedPatchHandle:
        from distri.parallel.displaced_patch_handle import DisplacedPatchHandle

        return DisplacedPatchHandle(denoiser, ctx, self)


STRATEGY = DisplacedPatch


def apply(denoiser: nn.Module, ctx: ParallelContext, **params) -> DisplacedPatchHandle:
    """``DisplacedPatch(**params).apply(denoiser, ctx)``; ``handle.remove()`` restores the denoiser."""
    return DisplacedPatch(**params).apply(denoiser, ctx)
