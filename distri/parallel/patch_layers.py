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
from distri.parallel.attention import tokens_in, tokens_out
from distri.parallel.context import ParallelContext


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
        self._kv: dict[str, comm.GatheredBuffer] = {}
        self.padded: dict[str, torch.Tensor] = {}  # conv key -> persistent haloed input [B, C, h + 2p, W]

    def kv_buffer(self, key: str) -> comm.GatheredBuffer:
        """The persistent keys/values buffer of self-attention layer ``key`` (its own all-gathers)."""
        if key not in self._kv:
            group = self.ctx.par_async_group or self.ctx.par_group
            self._kv[key] = comm.GatheredBuffer(group, self.ctx.ledger, "attn_kv", self.rank)
        return self._kv[key]

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
        for kv in self._kv.values():
            kv.wait()
        self.cache.clear()

    def gather(self, key: str, fresh: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """Every band's activations for this step's phase, in rank order (entry ``self.rank`` is ``fresh``).

        In ``sync`` all are this step's (a blocking all-gather); in ``async``/``frozen`` the others are stale.
        The returned tensors may alias the receive buffer: copy what you need, then call :meth:`post`.
        """
        if self.phase == "sync":
            g = comm.all_gather_stack(fresh, self.ctx.par_group, self.ctx.ledger, kind)
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


def _halo(state: PatchState, key: str, x: torch.Tensor, p: int) -> torch.Tensor:
    """``x`` with ``p`` rows from the neighbouring bands above and below (zeros at the image border), assembled
    in the layer's persistent padded buffer: this band is written into its middle rows, the neighbours' rows
    are copied in from the exchange (no new tensor per layer and step)."""
    B, C, h, W = x.shape
    if h < p:
        raise RuntimeError(f"{key}: band of {h} rows is thinner than the conv halo of {p} rows")
    pad = state.padded.get(key)
    if pad is None or pad.shape != (B, C, h + 2 * p, W) or pad.dtype != x.dtype:
        pad = state.padded[key] = x.new_zeros((B, C, h + 2 * p, W))  # image borders stay zero
    pad[:, :, p : p + h].copy_(x)
    boundary = torch.cat([x[:, :, :p], x[:, :, -p:]], dim=2)
    g = state.gather(key, boundary, "conv_halo")
    r, n = state.rank, state.n
    if r > 0:
        pad[:, :, :p].copy_(g[r - 1][:, :, p:])
    if r < n - 1:
        pad[:, :, p + h :].copy_(g[r + 1][:, :, :p])
    state.post(key, boundary, "conv_halo")
    return pad


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
    """GroupNorm over the whole image from per-band statistics ``s = (E[x], E[x^2])`` per sample and group.

    Bands have equal sizes, so the whole-image statistic is the mean of the bands' (``n`` bands, this is band
    ``r``; ``s_i`` fresh, ``s~_i`` the previous step's). Synchronous steps use ``mean_i s_i`` (exact). After
    the warm-up, by ``state.mode`` (the paper's and its reference code's estimators):

    * ``corrected_async_gn``: ``mean_i s~_i + (s_r - s~_r)``; where the resulting variance is negative, this
      band's own variance;
    * ``stale_gn``: ``(s_r + sum_{i != r} s~_i) / n`` (the other bands stale, this band fresh);
    * ``sync_gn``: ``mean_i s_i`` through a blocking all-gather every step;
    * ``separate_gn``: ``s_r`` (this band alone); ``no_sync`` does the same after the warm-up.

    ``Var = E[x^2] - E[x]^2`` is the biased variance of ``nn.GroupNorm`` (the reference code multiplies it by
    ``N / (N - 1)``; here synchronous steps equal the single device), clamped at zero against rounding.
    Statistics accumulate in float32 for half-precision inputs without an float32 copy of the activation.
    """

    def __init__(self, gn: nn.GroupNorm, state: PatchState, key: str) -> None:
        super().__init__()
        self.gn, self.state, self.key = gn, state, key

    def _band_stats(self, x: torch.Tensor) -> torch.Tensor:
        """``[2, B, G]``: this band's E[x] and E[x^2] per sample and group."""
        xg = x.reshape(x.shape[0], self.gn.num_groups, -1)
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        total = xg.sum(-1, dtype=acc)
        # the sum of squares as a norm: torch.var_mean is ~10x slower on CPU for this layout
        sq = torch.linalg.vector_norm(xg, dim=-1, dtype=acc).square()
        return torch.stack([total, sq], 0) / xg.shape[-1]

    def _stale(self, fresh: torch.Tensor) -> torch.Tensor:
        """``[n, 2, B, G]``: every band's statistics from the previous step; sends ``fresh`` for the next."""
        st = self.state
        b = st.buckets(fresh.dtype)
        stale = b.recv(self.key) if b.ready() else st.cache[self.key]
        stale = stale.clone()  # the receive buffer is reused by the next exchange
        b.send(self.key, fresh, "gn_stats")
        return stale

    def _mean_var(self, fresh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        st = self.state
        mode = "sync" if st.phase == "sync" else st.mode
        if mode in ("separate_gn", "no_sync"):
            stats = fresh
        elif mode == "sync":  # warm-up, full_sync: also keeps the statistics for the first stale step
            st.cache[self.key] = comm.all_gather_stack(fresh, st.ctx.par_group, st.ctx.ledger, "gn_stats")
            stats = st.cache[self.key].mean(0)
        elif mode == "sync_gn":
            stats = comm.all_gather_stack(fresh, st.ctx.par_group, st.ctx.ledger, "gn_stats").mean(0)
        elif mode == "stale_gn":
            stale = self._stale(fresh)
            stale[st.rank] = fresh
            stats = stale.mean(0)
        elif mode == "corrected_async_gn":
            stale = self._stale(fresh)
            stats = stale.mean(0) + (fresh - stale[st.rank])
            var = stats[1] - stats[0].square()
            own = fresh[1] - fresh[0].square()
            return stats[0], torch.where(var < 0, own, var).clamp_min(0)
        else:
            raise ValueError(f"PatchGroupNorm: no estimator for mode {mode!r}")
        return stats[0], (stats[1] - stats[0].square()).clamp_min(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gn = self.gn
        B, C = x.shape[:2]
        mean, var = self._mean_var(self._band_stats(x))  # [B, G] each
        rstd = torch.rsqrt(var + gn.eps)
        # y = x * scale + shift with per-(sample, channel) scale and shift: two passes over the band
        scale = rstd.repeat_interleave(C // gn.num_groups, dim=1)  # [B, C]
        shift = -mean.repeat_interleave(C // gn.num_groups, dim=1) * scale
        if gn.affine:
            w, bias = gn.weight.to(scale.dtype), gn.bias.to(scale.dtype)
            scale, shift = scale * w, shift * w + bias
        shape = (B, C) + (1,) * (x.ndim - 2)
        return (x * scale.to(x.dtype).view(shape)).add_(shift.to(x.dtype).view(shape))


class PatchSelfAttnProcessor:
    """Self-attention with this band's queries against keys/values of the whole image.

    This band's fresh K/V are written straight into the layer's persistent ``[B, n, L, 2D]`` buffer
    (:class:`distri.parallel.comm.GatheredBuffer`), whose other parts hold the other bands' K/V: gathered now
    (synchronous steps), at the previous step (``async``; this step's are sent after the attention has read the
    buffer) or at the last synchronous step (``frozen``). Keys are ordered by band, as in the single image.
    """

    def __init__(self, state: PatchState, key: str) -> None:
        self.state, self.key = state, key

    def _keys_values(self, attn, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        st = self.state
        B, L = hidden_states.shape[:2]
        D = attn.to_k.out_features
        buf = st.kv_buffer(self.key)
        own = buf.own(B, (L, 2 * D), hidden_states.dtype, hidden_states.device)  # [B, L, 2D]
        own[..., :D] = attn.to_k(hidden_states)
        own[..., D:] = attn.to_v(hidden_states)
        full = buf.exchange() if st.phase == "sync" else buf.buffer
        full = full.view(B, st.n * L, 2 * D)
        return full[..., :D], full[..., D:]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if encoder_hidden_states is not None:
            raise RuntimeError(f"{self.key}: the patch self-attention processor got encoder_hidden_states")
        if attention_mask is not None:
            raise NotImplementedError(f"{self.key}: attention masks are not supported with patch parallelism")
        residual = hidden_states
        hidden_states, shape = tokens_in(attn, hidden_states, temb)
        B = hidden_states.shape[0]
        q = attn.to_q(hidden_states)
        k, v = self._keys_values(attn, hidden_states)
        d = q.shape[-1] // attn.heads
        q = q.view(B, -1, attn.heads, d).transpose(1, 2)
        k = k.view(B, -1, attn.heads, d).transpose(1, 2)
        v = v.view(B, -1, attn.heads, d).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        if self.state.phase == "async":
            self.state.kv_buffer(self.key).launch()  # after the attention has read the buffer
        out = out.transpose(1, 2).reshape(B, -1, attn.heads * d).to(q.dtype)
        return tokens_out(attn, attn.to_out[1](attn.to_out[0](out)), residual, shape)
