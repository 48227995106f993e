"""The layers tensor parallelism swaps into a UNet; :mod:`distri.parallel.tensor` decides where and how to cut.

* :class:`RowParallelLinear` / :class:`RowParallelConv2d`: a layer split by input features or channels; this
  rank's partial result, one all-reduce over ``ctx.par_group`` (ledger kind ``tp_allreduce``), the bias once;
* :class:`TensorParallelAttnProcessor`: attention on this rank's contiguous block of heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

from distri.parallel import comm
from distri.parallel.attention import tokens_in, tokens_out
from distri.parallel.context import ParallelContext

KIND = "tp_allreduce"


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
        hidden_states, shape = tokens_in(attn, hidden_states, temb)
        ref = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length = ref.shape[0], ref.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
            attention_mask = attention_mask[:, self.offset : self.offset + self.heads]
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
        return tokens_out(attn, hidden_states, residual, shape)
