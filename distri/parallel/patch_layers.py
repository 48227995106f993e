"""Layers of displaced patch parallelism (DistriFusion): each rank holds a band of latent rows.

Every layer that needs context from other bands exchanges it in one of three phases, set per denoising step
by :class:`PatchState`:

* ``sync``   — a blocking all-gather of this step's (fresh) activations: exact;
* ``async``  — use the previous step's (stale) activations of the other bands, received through
  :class:`distri.parallel.comm.AsyncBuckets`, and send this step's fresh ones asynchronously for the next step;
* ``frozen`` — use the activations cached at the last synchronous step and send nothing (the paper's
  "No Comm." bound).

A layer reads what it received before it sends (the receive buffer is reused for the next exchange).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distri.parallel import comm
from distri.parallel.context import ParallelContext

GN_MODES = ("corrected_async_gn", "stale_gn", "sync_gn", "separate_gn", "full_sync", "no_sync")


class PatchState:
    """Shared by all patch layers of one UNet: the context, the GroupNorm mode, the phase and the buffers."""

    def __init__(self, ctx: ParallelContext, mode: str, bucket_bytes: int) -> None:
        self.ctx = ctx
        self.mode = mode
        self.phase = "sync"
        self.n = ctx.par_size
        self.rank = ctx.par_rank
        self.bucket_bytes = bucket_bytes
        self.cache: dict[str, torch.Tensor] = {}  # key -> [n, ...] gathered at the last synchronous step
        self._buckets: dict[torch.dtype, comm.AsyncBuckets] = {}

    def buckets(self, dtype: torch.dtype) -> comm.AsyncBuckets:
        if dtype not in self._buckets:
            esize = torch.empty((), dtype=dtype).element_size()
            self._buckets[dtype] = comm.AsyncBuckets(
                self.ctx.par_async_group or self.ctx.par_group,
                self.ctx.ledger,
                max(1, self.bucket_bytes // esize),
            )
        return self._buckets[dtype]

    def flush(self) -> None:
        for b in self._buckets.values():
            b.flush()

    def restart(self) -> None:
        """A new pipeline call: forget stale activations, keep the buffers (it starts with synchronous steps)."""
        for b in self._buckets.values():
            b.restart()
        self.cache.clear()

    def gather(self, key: str, fresh: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """Every band's activations for this step's phase, in rank order (entry ``self.rank`` is ``fresh``).

        In ``sync`` all are this step's (a blocking all-gather); in ``async``/``frozen`` the others are stale.
        The returned tensors may alias the receive buffer: copy what you need, then call :meth:`post`.
        """
        if self.phase == "sync":
            g = comm.all_gather(fresh.unsqueeze(0), self.ctx.par_group, self.ctx.ledger, kind, dim=0)
            self.cache[key] = g
            return list(g.unbind(0))
        if self.phase == "frozen":
            stale = self.cache[key]
        else:
            b = self.buckets(fresh.dtype)
            stale = b.recv(key) if b.ready() else self.cache[key]
        parts = list(stale.unbind(0))
        parts[self.rank] = fresh
        return parts

    def post(self, key: str, fresh: torch.Tensor, kind: str) -> None:
        """Send this step's activations for the next step (``async`` phase only; after :meth:`gather`'s use)."""
        if self.phase == "async":
            self.buckets(fresh.dtype).send(key, fresh, kind)

    def exchange(self, key: str, fresh: torch.Tensor, kind: str) -> torch.Tensor:
        """:meth:`gather` stacked into a new ``[n, *fresh.shape]`` tensor, then :meth:`post`."""
        out = torch.stack(self.gather(key, fresh, kind), 0)
        self.post(key, fresh, kind)
        return out


def _halo(state: PatchState, key: str, x: torch.Tensor, p: int) -> torch.Tensor:
    """``x`` with ``p`` rows from the neighbouring bands above and below (zeros at the image border)."""
    if x.shape[2] < p:
        raise RuntimeError(f"{key}: band of {x.shape[2]} rows is thinner than the conv halo of {p} rows")
    boundary = torch.cat([x[:, :, :p], x[:, :, -p:]], dim=2)
    g = state.gather(key, boundary, "conv_halo")
    r, n = state.rank, state.n
    top = g[r - 1][:, :, p:] if r > 0 else torch.zeros_like(x[:, :, :p])
    bottom = g[r + 1][:, :, :p] if r < n - 1 else torch.zeros_like(x[:, :, :p])
    out = torch.cat([top, x, bottom], dim=2)  # copies the halo out of the receive buffer
    state.post(key, boundary, "conv_halo")
    return out


def _conv_rows_unpadded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation, conv.groups)


def _check_conv(conv: nn.Conv2d, name: str) -> int:
    p = conv.padding[0]
    if conv.padding_mode != "zeros" or conv.dilation[0] != 1 or conv.kernel_size[0] != 2 * p + 1:
        raise ValueError(
            f"{name}: displaced patch parallelism supports zero-padded 'same' convolutions "
            f"(kernel 2p+1, padding p, dilation 1); got kernel {conv.kernel_size}, padding {conv.padding}"
        )
    return p


class HaloConv2d(nn.Module):
    """A 3x3 (or any 'same') convolution on a band of rows, with halo rows from its neighbours."""

    def __init__(self, conv: nn.Conv2d, state: PatchState, key: str) -> None:
        super().__init__()
        self.conv, self.state, self.key = conv, state, key
        self.p = _check_conv(conv, key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _conv_rows_unpadded(self.conv, _halo(self.state, self.key, x, self.p))


class FirstConv2d(nn.Module):
    """The UNet's ``conv_in``: reads its band plus halo straight from the full input latent (no communication)."""

    def __init__(self, conv: nn.Conv2d, state: PatchState) -> None:
        super().__init__()
        self.conv, self.state = conv, state
        self.p = _check_conv(conv, "conv_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, r, p = self.state.n, self.state.rank, self.p
        H = x.shape[2]
        if H % n:
            raise RuntimeError(f"latent height {H} is not divisible by {n} patches")
        h = H // n
        xp = F.pad(x, (0, 0, p, p))
        return _conv_rows_unpadded(self.conv, xp[:, :, r * h : r * h + h + 2 * p])


class PatchGroupNorm(nn.Module):
    """GroupNorm over the whole image from per-band statistics (mean and mean of squares per group).

    Bands have equal sizes, so the whole-image statistic is the mean of the bands'. In the ``async`` phase:
    ``corrected_async_gn`` uses stale whole-image stats corrected by this band's fresh-minus-stale stats;
    ``stale_gn`` the stale whole-image stats; ``sync_gn`` a blocking exchange of fresh stats; ``separate_gn``
    this band's stats alone. Variance is clamped at zero (stale corrections can push it below).
    """

    def __init__(self, gn: nn.GroupNorm, state: PatchState, key: str) -> None:
        super().__init__()
        self.gn, self.state, self.key = gn, state, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gn, st = self.gn, self.state
        B, C = x.shape[:2]
        G = gn.num_groups
        xg = x.reshape(B, G, -1)
        xs = xg.float() if x.dtype in (torch.float16, torch.bfloat16) else xg
        # sum and sum of squares (as a norm: torch.var_mean is ~10x slower on CPU for this layout)
        numel = xs.shape[-1]
        fresh = (
            torch.stack([xs.sum(-1), torch.linalg.vector_norm(xs, dim=-1).square()], 0) / numel
        )  # [2, B, G]
        mode = st.mode
        if st.phase == "async" and mode == "separate_gn":
            stats = fresh
        elif st.phase == "async" and mode == "sync_gn":
            g = comm.all_gather(fresh.unsqueeze(0), st.ctx.par_group, st.ctx.ledger, "gn_stats", dim=0)
            stats = g.mean(0)
        elif st.phase == "async" and mode == "stale_gn":
            b = st.buckets(fresh.dtype)
            stale = b.recv(self.key) if b.ready() else st.cache[self.key]
            stats = stale.mean(0)
            b.send(self.key, fresh, "gn_stats")
        else:
            stats = st.exchange(self.key, fresh, "gn_stats").mean(0)
        mean, meansq = stats[0], stats[1]
        rstd = torch.rsqrt((meansq - mean * mean).clamp_min(0) + gn.eps)  # [B, G]
        # y = x * scale + shift with per-(sample, channel) scale and shift: two passes over the band
        scale = rstd.repeat_interleave(C // G, dim=1)  # [B, C]
        shift = -mean.repeat_interleave(C // G, dim=1) * scale
        if gn.affine:
            w, bias = gn.weight.to(scale.dtype), gn.bias.to(scale.dtype)
            scale, shift = scale * w, shift * w + bias
        shape = (B, C) + (1,) * (x.ndim - 2)
        return (x * scale.to(x.dtype).view(shape)).add_(shift.to(x.dtype).view(shape))


class PatchSelfAttnProcessor:
    """Self-attention with this band's queries against keys/values of the whole image.

    Fresh K/V of this band, the other bands' K/V from the exchange (stale outside synchronous steps).
    """

    def __init__(self, state: PatchState, key: str) -> None:
        self.state, self.key = state, key

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if encoder_hidden_states is not None:
            raise RuntimeError(f"{self.key}: the patch self-attention processor got encoder_hidden_states")
        if attention_mask is not None:
            raise NotImplementedError(f"{self.key}: attention masks are not supported with patch parallelism")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        B = hidden_states.shape[0]
        q = attn.to_q(hidden_states)
        kv = torch.cat([attn.to_k(hidden_states), attn.to_v(hidden_states)], dim=-1)  # [B, L, 2D]
        full = torch.cat(
            self.state.gather(self.key, kv, "attn_kv"), dim=1
        )  # [B, n L, 2D], bands in row order
        self.state.post(self.key, kv, "attn_kv")
        k, v = full.chunk(2, dim=-1)
        d = q.shape[-1] // attn.heads
        q = q.view(B, -1, attn.heads, d).transpose(1, 2)
        k = k.view(B, -1, attn.heads, d).transpose(1, 2)
        v = v.view(B, -1, attn.heads, d).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(B, -1, attn.heads * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
