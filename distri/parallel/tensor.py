"""Tensor parallelism (Megatron style) for a stock diffusers ``UNet2DConditionModel``.

The ``par_size`` ranks of ``ctx.par_group`` each hold a shard of the big layers' weights and compute on the
full (replicated) activations; every sharded block ends in one all-reduce (ledger kind ``tp_allreduce``):

* attention (self and cross): heads are split; ``to_q``/``to_k``/``to_v`` keep this rank's heads (output
  features), ``to_out[0]`` the matching input features, then all-reduce, bias added once after it;
* feed-forward: ``net[0].proj`` keeps this rank's slice of the hidden dimension (for the gated GEGLU/SwiGLU
  the matching slices of both the value and the gate halves), ``net[2]`` the matching input features, then
  all-reduce;
* ResNet blocks: ``conv1`` and ``time_emb_proj`` by output channels (``scale_shift``: both halves), ``norm2``
  becomes a GroupNorm over the rank's channel shard (exact: the shard is a block of whole groups), ``conv2``
  by input channels, then all-reduce; ``norm1`` and ``conv_shortcut`` stay replicated;
* ``Downsample2D``/``Upsample2D`` convolutions and the UNet's ``conv_out``: by input channels (each rank
  slices its channel shard of the replicated input), then all-reduce.

Splits may be uneven. Each layer is cut into units (attention heads, FFN hidden features, GroupNorm groups of
``norm2``, conv input channels) and rank ``r`` gets a contiguous block of them, the block sizes differing by
at most one, the first ``units % par_size`` ranks taking one more (:func:`shard_range`; 10 heads over 8 ranks:
2, 2, 1, 1, 1, 1, 1, 1). The only requirement is at least one unit of every sharded layer per rank, i.e.
``par_size <=`` the smallest head count / group count / FFN width / conv width. Uneven splits change neither
the result nor the all-reduce traffic (full-size outputs are reduced), only the balance: a rank with an extra
head holds and computes a little more (:meth:`TensorParallelHandle.param_report` says how much).

Everything else (``conv_in``, embeddings, ``proj_in``/``proj_out``, norms) stays replicated. The output equals
the single-device UNet up to floating-point summation order. With ``par_size == 1`` nothing is changed.
Attention modules with a non-stock processor, and other unsupported variants, stay replicated (still exact);
``handle.skipped`` lists them.

Memory: every rank holds new, smaller parameters for the sharded layers. The handle keeps the original full
modules so that :meth:`TensorParallelHandle.remove` can restore the stock UNet; while applied they therefore
stay in memory (off the UNet). ``free_full=True`` drops them instead (then ``remove()`` raises).
Inference only: the all-reduces are not autograd-aware.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.activations import GEGLU, GELU, ApproximateGELU, LinearActivation, SwiGLU
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from distri.parallel import comm
from distri.parallel.base import StrategyHandle
from distri.parallel.context import ParallelContext

KIND = "tp_allreduce"
_GATED = (GEGLU, SwiGLU)
_PLAIN = (GELU, ApproximateGELU, LinearActivation)


# -- the sharded layers ----------------------------------------------------------------------------
class _RowParallel(nn.Module):
    """A layer split by input features: partial result from this rank's shard, all-reduce, bias once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, ctx: ParallelContext) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.ctx = ctx

    def _reduce(self, y: torch.Tensor, bias_shape: tuple[int, ...]) -> torch.Tensor:
        y = comm.all_reduce(y.contiguous(), self.ctx.par_group, self.ctx.ledger, KIND)
        return y if self.bias is None else y.add_(self.bias.view(bias_shape))


class RowParallelLinear(_RowParallel):
    """``all_reduce(x_shard @ W_shard^T) + b``: a Linear split by input features (``x`` is a shard)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(F.linear(x, self.weight), (-1,))


class RowParallelConv2d(_RowParallel):
    """A Conv2d split by input channels; ``in_slice`` cuts this rank's channels out of a replicated input."""

    def __init__(
        self, conv: nn.Conv2d, weight: torch.Tensor, in_slice: tuple[int, int] | None, ctx: ParallelContext
    ) -> None:
        super().__init__(weight, conv.bias, ctx)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.in_slice = in_slice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_slice is not None:
            x = x[:, self.in_slice[0] : self.in_slice[1]]
        return self._reduce(
            F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation), (1, -1, 1, 1)
        )


class TensorParallelAttnProcessor:
    """``AttnProcessor2_0`` on this rank's heads ``[offset, offset + heads)``; ``attn.heads`` is left alone.

    ``to_q``/``to_k``/``to_v`` are already sharded to these heads and ``to_out[0]`` is a
    :class:`RowParallelLinear`, so the all-reduce happens inside it, before the residual.
    """

    def __init__(self, heads: int, offset: int, head_dim: int, scale: float | None) -> None:
        self.heads, self.offset, self.head_dim, self.scale = heads, offset, head_dim, scale

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        ref = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length = ref.shape[0], ref.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
            attention_mask = attention_mask[:, self.offset : self.offset + self.heads]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch_size, -1, self.heads, self.head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=self.scale
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, self.heads * self.head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# -- which layers, and how they split -----------------------------------------------------------------
def shard_range(units: int, n: int, r: int) -> tuple[int, int]:
    """Rank ``r``'s contiguous block ``[start, stop)`` of ``units`` split over ``n`` ranks.

    Block sizes differ by at most one; the first ``units % n`` ranks get the larger ones (10 over 8:
    2, 2, 1, 1, 1, 1, 1, 1). Needs ``units >= n`` for every block to be non-empty.
    """
    q, rem = divmod(units, n)
    start = r * q + min(r, rem)
    return start, start + q + (1 if r < rem else 0)


@dataclass
class _Layer:
    name: str
    kind: str  # "attn", "ff", "resnet", "conv"
    module: nn.Module
    units: list[tuple[str, int]] = field(default_factory=list)  # (what, count) split over the ranks
    attr: str = ""  # for "conv": the attribute of ``module`` holding the convolution


def _plain_conv(m: object) -> bool:
    return type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"


def _find_layers(unet: nn.Module) -> tuple[list[_Layer], list[tuple[str, str]]]:
    """The layers tensor parallelism shards, and the ``(name, reason)`` of candidates it leaves replicated."""
    layers: list[_Layer] = []
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
                layers.append(_Layer(name, "attn", m, [("attention heads", m.heads)]))
        elif isinstance(m, FeedForward):
            act, out = m.net[0], m.net[2]
            if type(act) in _GATED + _PLAIN and type(act.proj) is nn.Linear and type(out) is nn.Linear:
                layers.append(_Layer(name, "ff", m, [("feed-forward inner dim", out.in_features)]))
            else:
                skipped.append((name, f"activation {type(act).__name__}"))
        elif isinstance(m, ResnetBlock2D):
            ok = _plain_conv(m.conv1) and _plain_conv(m.conv2) and type(m.norm2) is nn.GroupNorm
            ok = ok and m.norm2.num_channels == m.conv1.out_channels == m.conv2.in_channels
            ok = ok and (m.time_emb_proj is None or type(m.time_emb_proj) is nn.Linear)
            if ok:
                layers.append(_Layer(name, "resnet", m, [("GroupNorm groups", m.norm2.num_groups)]))
            else:
                skipped.append((name, "unsupported ResNet layers"))
        elif isinstance(m, (Downsample2D, Upsample2D)):
            attr = "conv" if isinstance(m, Downsample2D) or m.name == "conv" else "Conv2d_0"
            conv = getattr(m, attr)
            if _plain_conv(conv):
                layers.append(_Layer(name, "conv", m, [("conv input channels", conv.in_channels)], attr))
    if _plain_conv(getattr(unet, "conv_out", None)):
        layers.append(
            _Layer("conv_out", "conv", unet, [("conv input channels", unet.conv_out.in_channels)], "conv_out")
        )
    return layers, skipped


def _valid_sizes(layers: list[_Layer], max_size: int) -> list[int]:
    """``1 .. min(units)``: every rank must get at least one unit of every sharded layer."""
    fewest = min((count for layer in layers for _, count in layer.units), default=max_size)
    return list(range(1, min(fewest, max_size) + 1))


def _check(layers: list[_Layer], n: int, cfg_size: int) -> None:
    bad: dict[tuple[str, int], list[str]] = {}
    for layer in layers:
        for what, count in layer.units:
            if count < n:
                bad.setdefault((what, count), []).append(layer.name)
    if not bad:
        return
    lines = [
        f"  {what} = {count} in {names[0]}"
        + (f" (and {len(names) - 1} more layers)" if len(names) > 1 else "")
        for (what, count), names in bad.items()
    ]
    ok = _valid_sizes(layers, 64)
    worlds = ", ".join(str(p * cfg_size) for p in ok)
    raise ValueError(
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
    if isinstance(unet_config, nn.Module):
        unet = unet_config
    else:
        cfg = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(cfg)
    return _valid_sizes(_find_layers(unet)[0], max_size)


# -- the strategy -------------------------------------------------------------------------------------
def _param_bytes(m: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in m.parameters())


def _rows(t: torch.Tensor, start: int, stop: int, parts: int = 1) -> torch.Tensor:
    """Rows ``[start, stop)`` of every one of the ``parts`` equal blocks of ``t`` along dim 0 (a new tensor)."""
    return torch.cat([c[start:stop] for c in t.detach().chunk(parts, dim=0)], dim=0)


def _cols(t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return t.detach()[:, start:stop].clone(memory_format=torch.contiguous_format)


def _with_params(m: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """``m`` (built on the meta device) with the given parameters."""
    m.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        m.bias = nn.Parameter(bias, requires_grad=False)
    return m


def _new_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    m = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    return _with_params(m, weight, bias)


class TensorParallelHandle(StrategyHandle):
    """Handle of strategy ``tensor`` (see the module docstring); ``skipped`` lists layers left replicated."""

    name = "tensor"
    exact = True

    def __init__(
        self, unet: nn.Module, ctx: ParallelContext, cfg_split: bool = False, free_full: bool = False
    ) -> None:
        layers, self.skipped = _find_layers(unet)
        _check(layers, ctx.par_size, ctx.cfg_size)  # before touching the UNet
        super().__init__(unet, ctx, cfg_split=cfg_split)
        self._unet_full = _param_bytes(unet)
        self._full = self._local = 0
        self._heads_full = self._heads_local = 0
        self._uneven = 0
        self._freed = False
        if ctx.par_size > 1:
            self.save_processors()
            for layer in layers:
                getattr(self, f"_shard_{layer.kind}")(layer)
                self._uneven += any(count % ctx.par_size for _, count in layer.units)
        self._n_layers = len(layers) if ctx.par_size > 1 else 0
        self._unet_local = _param_bytes(unet)
        if free_full and ctx.par_size > 1:
            self._replaced.clear()
            self._freed = True

    def remove(self) -> None:
        """Restore the stock UNet (the original full modules and attention processors)."""
        if self._freed and not self._removed:
            raise RuntimeError(
                "tensor parallelism was applied with free_full=True: the full layers are gone, so the stock UNet "
                "cannot be restored (reload the pipeline; compare_to_original needs free_full=False)"
            )
        super().remove()

    def param_report(self) -> dict:
        """This rank's parameter bytes of the sharded layers (full vs local shard) and of the whole UNet.

        With uneven splits the ranks differ: ``sharded_ratio`` is this rank's share of the sharded layers'
        bytes, ``even_ratio`` the ``1 / par_size`` an even split would give; ``uneven_layers`` counts the
        sharded layers whose units do not divide evenly, ``attention_heads_local`` / ``_full`` this rank's
        heads against all heads of the sharded attentions.
        """
        return {
            "par_size": self.ctx.par_size,
            "par_rank": self.ctx.par_rank,
            "sharded_layers": self._n_layers,
            "uneven_layers": self._uneven,
            "skipped_layers": len(self.skipped),
            "sharded_full_bytes": self._full,
            "sharded_local_bytes": self._local,
            "sharded_ratio": self._local / self._full if self._full else 1.0,
            "even_ratio": 1.0 / self.ctx.par_size,
            "attention_heads_full": self._heads_full,
            "attention_heads_local": self._heads_local,
            "unet_full_bytes": self._unet_full,
            "unet_local_bytes": self._unet_local,
            "full_layers_retained": self._n_layers > 0 and not self._freed,
        }

    # -- sharding, one layer kind each --------------------------------------------------------------
    def _swap(self, name: str, new: nn.Module) -> None:
        old = self.unet.get_submodule(name)
        self._full += _param_bytes(old)
        self._local += _param_bytes(new)
        self.replace_module(name, new)

    def _range(self, units: int) -> tuple[int, int]:
        return shard_range(units, self.ctx.par_size, self.ctx.par_rank)

    def _shard_attn(self, layer: _Layer) -> None:
        attn = layer.module
        head_dim = attn.to_q.out_features // attn.heads
        h0, h1 = self._range(attn.heads)
        f0, f1 = h0 * head_dim, h1 * head_dim
        for p in ("to_q", "to_k", "to_v"):
            lin = getattr(attn, p)
            b = None if lin.bias is None else _rows(lin.bias, f0, f1)
            self._swap(f"{layer.name}.{p}", _new_linear(_rows(lin.weight, f0, f1), b))
        out = attn.to_out[0]
        self._swap(f"{layer.name}.to_out.0", RowParallelLinear(_cols(out.weight, f0, f1), out.bias, self.ctx))
        scale = None if type(attn.processor) is AttnProcessor2_0 else attn.scale
        attn.set_processor(TensorParallelAttnProcessor(h1 - h0, h0, head_dim, scale))
        self._heads_full += attn.heads
        self._heads_local += h1 - h0

    def _shard_ff(self, layer: _Layer) -> None:
        ff = layer.module
        proj, out = ff.net[0].proj, ff.net[2]
        i0, i1 = self._range(out.in_features)
        parts = 2 if isinstance(ff.net[0], _GATED) else 1  # [value; gate]: keep this rank's rows of both
        b = None if proj.bias is None else _rows(proj.bias, i0, i1, parts)
        self._swap(f"{layer.name}.net.0.proj", _new_linear(_rows(proj.weight, i0, i1, parts), b))
        self._swap(f"{layer.name}.net.2", RowParallelLinear(_cols(out.weight, i0, i1), out.bias, self.ctx))

    def _shard_resnet(self, layer: _Layer) -> None:
        res, name = layer.module, layer.name
        c1, g = res.conv1, res.norm2
        per_group = g.num_channels // g.num_groups
        g0, g1 = self._range(g.num_groups)  # whole groups: the local GroupNorm is exact
        k0, k1 = g0 * per_group, g1 * per_group
        conv1 = nn.Conv2d(c1.in_channels, k1 - k0, c1.kernel_size, bias=c1.bias is not None, device="meta")
        conv1.stride, conv1.padding, conv1.dilation = c1.stride, c1.padding, c1.dilation
        b1 = None if c1.bias is None else _rows(c1.bias, k0, k1)
        conv1 = _with_params(conv1, _rows(c1.weight, k0, k1), b1)
        self._swap(f"{name}.conv1", conv1)
        if res.time_emb_proj is not None:
            t = res.time_emb_proj
            parts = 2 if res.time_embedding_norm == "scale_shift" else 1  # [scale; shift]
            b = None if t.bias is None else _rows(t.bias, k0, k1, parts)
            self._swap(f"{name}.time_emb_proj", _new_linear(_rows(t.weight, k0, k1, parts), b))
        norm2 = nn.GroupNorm(g1 - g0, k1 - k0, g.eps, g.affine, device="meta")
        if g.affine:
            norm2 = _with_params(norm2, _rows(g.weight, k0, k1), _rows(g.bias, k0, k1))
        self._swap(f"{name}.norm2", norm2)
        self._swap(
            f"{name}.conv2", RowParallelConv2d(res.conv2, _cols(res.conv2.weight, k0, k1), None, self.ctx)
        )

    def _shard_conv(self, layer: _Layer) -> None:
        conv = getattr(layer.module, layer.attr)
        k0, k1 = self._range(conv.in_channels)
        new = RowParallelConv2d(conv, _cols(conv.weight, k0, k1), (k0, k1), self.ctx)
        prefix = "" if layer.module is self.unet else f"{layer.name}."
        self._swap(prefix + layer.attr, new)
        if layer.attr == "conv" and getattr(layer.module, "Conv2d_0", None) is conv:
            self.replace_module(prefix + "Conv2d_0", new)  # Downsample2D(name="conv") holds it twice


def apply(
    unet: nn.Module, ctx: ParallelContext, cfg_split: bool = False, free_full: bool = False
) -> TensorParallelHandle:
    """Strategy ``tensor``: shard the UNet's big layers over ``ctx.par_group`` (see the module docstring).

    Splits may be uneven (:func:`shard_range`). Raises ``ValueError`` (before touching the UNet) when
    ``ctx.par_size`` exceeds a head count, FFN inner dim, GroupNorm group count or conv input channel count of
    a sharded layer (some rank would get nothing), naming the layer and the sizes that work.
    ``free_full=True`` drops the original full layers (saves their memory; ``remove()`` then raises).
    """
    return TensorParallelHandle(unet, ctx, cfg_split=cfg_split, free_full=free_full)
