"""Tensor parallelism's plan: which layers of a denoiser it shards, how they split, and which degrees fit.

No weight is touched here; :func:`valid_world_sizes` reads a UNet config by building the UNet on the meta device.
See :mod:`distri.parallel.tensor` for the sharding itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers.models.activations import GEGLU, GELU, ApproximateGELU, LinearActivation, SwiGLU
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

GATED = (GEGLU, SwiGLU)
_PLAIN = (GELU, ApproximateGELU, LinearActivation)


def shard_range(units: int, n: int, r: int) -> tuple[int, int]:
    """Rank ``r``'s contiguous block ``[start, stop)`` of ``units`` split over ``n`` ranks.

    Block sizes differ by at most one; the first ``units % n`` ranks get the larger ones (10 over 8:
    2, 2, 1, 1, 1, 1, 1, 1). Needs ``units >= n`` for every block to be non-empty.
    """
    q, rem = divmod(units, n)
    start = r * q + min(r, rem)
    return start, start + q + (1 if r < rem else 0)


@dataclass
class Layer:
    name: str
    kind: str  # "attn", "ff", "resnet", "conv"
    module: nn.Module
    units: list[tuple[str, int]] = field(default_factory=list)  # (what, count) split over the ranks
    attr: str = ""  # for "conv": the attribute of ``module`` holding the convolution


def _plain_conv(m: object) -> bool:
    return type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"


def find_layers(
    unet: nn.Module, output_layer: str | None = "conv_out"
) -> tuple[list[Layer], list[tuple[str, str]]]:
    """The layers tensor parallelism shards, and the ``(name, reason)`` of candidates it leaves replicated."""
    layers: list[Layer] = []
    skipped: list[tuple[str, str]] = []
    for name, m in unet.named_modules():
        if isinstance(m, Attention):
            why = None
            if type(m.processor) not in (AttnProcessor2_0, AttnProcessor):
                why = f"processor {type(m.processor).__name__}"
            elif getattr(m, "to_out", None) is None:
                why = "no output projection"
            elif m.add_k_proj is not None or getattr(m, "fused_projections", False):
                why = "added or fused projections"
            elif not all(type(p) is nn.Linear for p in (m.to_q, m.to_k, m.to_v, m.to_out[0])):
                why = "non-Linear projections"
            elif not (
                m.to_q.out_features == m.to_k.out_features == m.to_v.out_features == m.to_out[0].in_features
            ):
                why = "key/value width differs from the query width"
            elif m.to_q.out_features % m.heads:
                why = "projection width not a multiple of the head count"
            if why:
                skipped.append((name, why))
            else:
                layers.append(Layer(name, "attn", m, [("attention heads", m.heads)]))
        elif isinstance(m, FeedForward):
            act, out = m.net[0], m.net[2]
            if type(act) in GATED + _PLAIN and type(act.proj) is nn.Linear and type(out) is nn.Linear:
                layers.append(Layer(name, "ff", m, [("feed-forward inner dim", out.in_features)]))
            else:
                skipped.append((name, f"activation {type(act).__name__}"))
        elif isinstance(m, ResnetBlock2D):
            ok = _plain_conv(m.conv1) and _plain_conv(m.conv2) and type(m.norm2) is nn.GroupNorm
            ok = ok and m.norm2.num_channels == m.conv1.out_channels == m.conv2.in_channels
            ok = ok and (m.time_emb_proj is None or type(m.time_emb_proj) is nn.Linear)
            if ok:
                layers.append(Layer(name, "resnet", m, [("GroupNorm groups", m.norm2.num_groups)]))
            else:
                skipped.append((name, "unsupported ResNet layers"))
        elif isinstance(m, (Downsample2D, Upsample2D)):
            attr = "conv" if isinstance(m, Downsample2D) or m.name == "conv" else "Conv2d_0"
            conv = getattr(m, attr)
            if _plain_conv(conv):
                layers.append(Layer(name, "conv", m, [("conv input channels", conv.in_channels)], attr))
    out = getattr(unet, output_layer, None) if output_layer else None
    if _plain_conv(out):
        layers.append(
            Layer(output_layer, "conv", unet, [("conv input channels", out.in_channels)], output_layer)
        )
    return layers, skipped


def valid_sizes(layers: list[Layer], max_size: int) -> list[int]:
    """``1 .. min(units)``: every rank must get at least one unit of every sharded layer."""
    fewest = min((count for layer in layers for _, count in layer.units), default=max_size)
    return list(range(1, min(fewest, max_size) + 1))


def misfit(layers: list[Layer], n: int, cfg_size: int) -> str | None:
    """Why ``n`` ranks cannot share these layers (each needs at least one unit of every one), or None."""
    bad: dict[tuple[str, int], list[str]] = {}
    for layer in layers:
        for what, count in layer.units:
            if count < n:
                bad.setdefault((what, count), []).append(layer.name)
    if not bad:
        return None
    lines = [
        f"  {what} = {count} in {names[0]}"
        + (f" (and {len(names) - 1} more layers)" if len(names) > 1 else "")
        for (what, count), names in bad.items()
    ]
    ok = valid_sizes(layers, 64)
    worlds = ", ".join(str(p * cfg_size) for p in ok)
    return (
        f"tensor parallelism cannot split this UNet over par_size={n} ranks: every rank needs at least one "
        f"attention head, GroupNorm group, FFN feature and conv input channel of every sharded layer "
        f"(splits may be uneven); fewer than {n}:\n"
        + "\n".join(lines)
        + f"\ntensor degrees (par_size) that work: {ok}; "
        + f"with cfg_size={cfg_size} that is world_size in [{worlds}]"
    )


def valid_world_sizes(unet_config: dict | nn.Module, max_size: int = 64) -> list[int]:
    """Tensor-parallel degrees ``par_size <= max_size`` that give every rank at least one attention head, FFN
    inner feature, ``norm2`` GroupNorm group and conv input channel of every sharded layer (splits may be
    uneven; ``world_size = cfg_size * par_size``): ``1 ..`` the smallest of those counts.

    Takes the UNet's config dict (the UNet is built on the ``meta`` device to read its layers: no memory, no
    weights) or a UNet module.
    """
    return valid_sizes(find_layers(as_module(unet_config))[0], max_size)


def as_module(unet: dict | nn.Module) -> nn.Module:
    """``unet`` itself, or the UNet of a config dict, built on the meta device (no memory, no weights)."""
    from distri.models.denoiser import build_meta_unet

    return unet if isinstance(unet, nn.Module) else build_meta_unet(unet)
