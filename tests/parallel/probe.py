"""A probe denoiser for displaced patch parallelism, and the worker task that runs it (importable by workers).

The probe applies three layers side by side to its input latent (through a 1x1 identity ``conv_in``, which
displaced patch parallelism replaces by its band-cutting first convolution): a 3x3 convolution (halo rows), a
self-attention layer (keys/values of the whole image) and a GroupNorm (whole-image statistics). Its output is
their concatenation along channels. Because every probe reads the latent itself, a test can write what each
layer must compute at every step from the latents alone, independently of the implementation.

The probe is not a UNet: it tells the strategies what they need through its model adapter (registered below),
which is the seam a new model family (a DiT, say) uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distri.models.adapters import ModelAdapter, register_adapter

CHANNELS, GROUPS, HEADS = 8, 4, 2


class ProbeDenoiser(nn.Module):
    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        from diffusers.models.attention_processor import Attention

        super().__init__()
        g = torch.Generator().manual_seed(seed)
        c = CHANNELS
        self.conv_in = nn.Conv2d(c, c, 1)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.attn = Attention(query_dim=c, heads=HEADS, dim_head=c // HEADS)
        self.norm = nn.GroupNorm(GROUPS, c)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.conv_in.weight.copy_(torch.eye(c).view(c, c, 1, 1))
            self.conv_in.bias.zero_()
        self.to(dtype).eval()

    def forward(self, sample: torch.Tensor, timestep: Any) -> tuple[torch.Tensor]:
        a = self.conv_in(sample)
        return (torch.cat([self.conv(a), self.attn(a), self.norm(a)], dim=1),)


# no down-sampling (any band height works); conv_in reads the latent
register_adapter(ProbeDenoiser, lambda m: ModelAdapter("sample", downsamples=0, input_layer="conv_in"))


def latents(steps: int, height: int, width: int = 8, constant: bool = False, seed: int = 1) -> torch.Tensor:
    """``[steps, 2, C, H, W]`` float64 latents: a random walk (or the same latent at every step)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, CHANNELS, height, width, generator=g, dtype=torch.float64)
    if constant:
        return x0.expand(steps, *x0.shape).clone()
    steps_ = torch.randn(steps, *x0.shape, generator=g, dtype=torch.float64) * 0.3
    steps_[0] = 0
    return x0 + steps_.cumsum(0)


@torch.no_grad()
def run_probe(env, params: dict[str, Any], steps: int, height: int, constant: bool = False) -> dict[str, Any]:
    """Run the probe under ``displaced_patch`` with ``params`` for ``steps`` steps; every rank returns its
    gathered outputs ``[steps, 2, 3C, H, W]`` (each band computed by its own rank)."""
    from distri.parallel.displaced_patch import apply

    model = ProbeDenoiser()
    xs = latents(steps, height, constant=constant)
    handle = apply(model, env.context(1), **params)
    outs = torch.stack([model(xs[t], 999 - t)[0] for t in range(steps)])
    handle.remove()
    return {"rank": env.rank, "outs": outs}
