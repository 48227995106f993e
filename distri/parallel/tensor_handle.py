"""What :class:`distri.parallel.tensor.Tensor` does to a denoiser: shards its big layers (torch; the
declaration is torch-free). The method, and which layers are cut, are in :mod:`distri.parallel.tensor`."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from distri.models.adapters import adapter_for
from distri.parallel.base import StrategyHandle
from distri.parallel.context import ParallelContext
from distri.parallel.tensor_layers import RowParallelConv2d, RowParallelLinear, TensorParallelAttnProcessor
from distri.parallel.tensor_plan import GATED, Layer, find_layers, misfit, shard_range

HOST = torch.device("cpu")  # where the full layers wait for remove()


# -- building the shards -------------------------------------------------------------------------------
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

    def __init__(
        self, unet: nn.Module, ctx: ParallelContext, cfg_split: bool = False, free_full: bool = False
    ) -> None:
        adapter = adapter_for(unet)
        layers, self.skipped = find_layers(unet, adapter.output_layer)
        problem = misfit(layers, ctx.par_size, ctx.cfg_size)
        if problem:  # before touching the UNet
            raise ValueError(problem)
        super().__init__(unet, ctx, cfg_split=cfg_split, adapter=adapter)
        self._unet_full = _param_bytes(unet)
        self._home = next(unet.parameters()).device  # where remove() puts the full layers back
        self._full = self._local = 0
        self._heads_full = self._heads_local = 0
        self._uneven = 0
        self._freed = free_full and ctx.par_size > 1
        if ctx.par_size > 1:
            self.save_processors()
            for layer in layers:
                getattr(self, f"_shard_{layer.kind}")(layer)
                self._uneven += any(count % ctx.par_size for _, count in layer.units)
        self._n_layers = len(layers) if ctx.par_size > 1 else 0
        self._unet_local = _param_bytes(unet)

    def remove(self) -> None:
        """Restore the stock UNet: the full layers back from host memory, the stock attention processors."""
        if self._freed and not self._removed:
            raise RuntimeError(
                "tensor parallelism was applied with free_full=True: the full layers are gone, so the stock UNet "
                "cannot be restored (reload the pipeline; compare_to_original needs free_full=False)"
            )
        if not self._removed:
            for _, full in self._replaced:
                if self._home.type != "meta":
                    full.to(self._home)
        super().remove()

    def param_report(self) -> dict:
        """This rank's parameter bytes of the sharded layers (full vs local shard) and of the whole UNet.

        With uneven splits the ranks differ: ``sharded_ratio`` is this rank's share of the sharded layers'
        bytes, ``even_ratio`` the ``1 / par_size`` an even split would give; ``uneven_layers`` counts the
        sharded layers whose units do not divide evenly, ``attention_heads_local`` / ``_full`` this rank's
        heads against all heads of the sharded attentions. ``full_layers`` says where the original full layers
        are: ``host`` (kept in CPU memory for ``remove()``, ``full_layers_host_bytes`` of them), ``freed``
        (``free_full``) or ``none`` (nothing sharded).
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
            "full_layers": "none" if self._n_layers == 0 else "freed" if self._freed else "host",
            "full_layers_host_bytes": self._full if self._n_layers and not self._freed else 0,
        }

    # -- sharding, one layer kind each --------------------------------------------------------------
    def _swap(self, name: str, new: nn.Module) -> None:
        old = self.unet.get_submodule(name)
        self._full += _param_bytes(old)
        self._local += _param_bytes(new)
        self._replace(name, new)

    def _replace(self, name: str, new: nn.Module) -> None:
        """Swap ``new`` in; the full module moves to host memory for ``remove()``, or is dropped (free_full)."""
        self.replace_module(name, new)
        if self._freed:
            self._replaced.pop()  # no reference left: its memory is released now
        elif self._home.type != "meta":  # the dry run's meta tensors hold no memory to move
            self._replaced[-1][1].to(HOST)

    def _range(self, units: int) -> tuple[int, int]:
        return shard_range(units, self.ctx.par_size, self.ctx.par_rank)

    def _shard_attn(self, layer: Layer) -> None:
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

    def _shard_ff(self, layer: Layer) -> None:
        ff = layer.module
        proj, out = ff.net[0].proj, ff.net[2]
        i0, i1 = self._range(out.in_features)
        parts = 2 if isinstance(ff.net[0], GATED) else 1  # [value; gate]: keep this rank's rows of both
        b = None if proj.bias is None else _rows(proj.bias, i0, i1, parts)
        self._swap(f"{layer.name}.net.0.proj", _new_linear(_rows(proj.weight, i0, i1, parts), b))
        self._swap(f"{layer.name}.net.2", RowParallelLinear(_cols(out.weight, i0, i1), out.bias, self.ctx))

    def _shard_resnet(self, layer: Layer) -> None:
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

    def _shard_conv(self, layer: Layer) -> None:
        conv = getattr(layer.module, layer.attr)
        k0, k1 = self._range(conv.in_channels)
        new = RowParallelConv2d(conv, _cols(conv.weight, k0, k1), (k0, k1), self.ctx)
        prefix = "" if layer.module is self.unet else f"{layer.name}."
        self._swap(prefix + layer.attr, new)
        if layer.attr == "conv" and getattr(layer.module, "Conv2d_0", None) is conv:
            self._replace(prefix + "Conv2d_0", new)  # Downsample2D(name="conv") holds it twice
